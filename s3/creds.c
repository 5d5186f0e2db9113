/*
 * creds.c - the credential chain and region discovery.  The order and the
 * contract are in the "creds" section of internal.h.
 *
 * Static credentials (passwd files, environment, the shared AWS files) are
 * read once by s3_creds_new().  Temporary ones (ECS container, EC2 instance
 * role) are fetched over HTTP with short timeouts, so that a machine that is
 * not in a container or on EC2 fails fast, and are refreshed by whichever
 * thread first finds them due.  The other threads keep using the current
 * credentials meanwhile and only wait when those have already expired.
 *
 * Secrets are wiped from memory when released and never reach the log: only
 * source names and access key ids do.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "internal.h"

#define CREDS_NS_PER_S INT64_C(1000000000)

/* Temporary credentials are refreshed when less than this, or a quarter of
 * their lifetime if that is less, remains. */
#define CREDS_REFRESH_NS (300 * CREDS_NS_PER_S)

#define CREDS_MAX_FILE           (1 << 20)  /* larger passwd / ini files are refused */
#define CREDS_MAX_BODY           (64 << 10) /* larger metadata responses are refused */
#define CREDS_JSON_MAX_DEPTH     16
#define CREDS_CONNECT_TIMEOUT_MS 1000
#define CREDS_TIMEOUT_MS         2000

#define CREDS_ECS_BASE        "http://169.254.170.2"
#define CREDS_IMDS_DEFAULT    "http://169.254.169.254"
#define CREDS_IMDS_TOKEN_PATH "/latest/api/token"
#define CREDS_IMDS_CREDS_PATH "/latest/meta-data/iam/security-credentials/"
#define CREDS_IMDS_REGION     "/latest/meta-data/placement/region"

/* Variables rather than constants only so that the unit test, which includes
 * this file, can move /etc's passwd file and shorten the pause between failed
 * refresh attempts; nothing else changes them. */
static const char *creds_etc_passwd = "/etc/passwd-s3fs";
static int64_t creds_retry_ns = 10 * CREDS_NS_PER_S;

enum creds_kind { CREDS_STATIC = 0, CREDS_ECS, CREDS_IMDS };

struct s3_cred_provider {
	pthread_mutex_t lock;
	pthread_cond_t cond; /* broadcast when a refresh ends */

	/* Immutable after s3_creds_new(). */
	enum creds_kind kind;
	char *source;
	char *url;            /* ECS: the full URL; IMDS: the base URL */
	char *ecs_token;      /* ECS: AWS_CONTAINER_AUTHORIZATION_TOKEN (secret) */
	char *ecs_token_file; /* ECS: ..._TOKEN_FILE, read at every fetch */
	char *role;           /* IMDS: the instance role */
	char *profile_region;
	char *imds_region;
	s3_log_fn log;
	int log_level;

	/* Guarded by lock. */
	s3_credentials cur;
	int64_t expires_ns; /* 0: never */
	int64_t obtained_ns;
	bool refreshing;         /* a thread is fetching, lock released */
	int64_t next_attempt_ns; /* no refresh before this */
	s3_error last_err;       /* of the last failed refresh */
};

/* ---------------------------------------------------------------- helpers */

static int64_t creds_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * CREDS_NS_PER_S + ts.tv_nsec;
}

__attribute__((format(printf, 3, 4))) static void creds_log(const s3_cred_provider *p, int level,
                                                            const char *fmt, ...)
{
	va_list ap;

	if (!p->log || level > p->log_level)
		return;
	va_start(ap, fmt);
	p->log(level, fmt, ap);
	va_end(ap);
}

__attribute__((format(printf, 3, 4))) static void creds_errf(char *buf, size_t len, const char *fmt,
                                                             ...)
{
	va_list ap;

	if (!buf || !len)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, len, fmt, ap);
	va_end(ap);
}

__attribute__((format(printf, 5, 6))) static void
creds_set_error(s3_error *err, int sys_errno, int curl_code, long status, const char *fmt, ...)
{
	va_list ap;

	if (!err)
		return;
	memset(err, 0, sizeof(*err));
	err->sys_errno = sys_errno;
	err->curl_code = curl_code;
	err->http_status = (int)status;
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
}

/* The errno an s3_error stands for, negated, never 0. */
static int creds_err_result(const s3_error *err)
{
	int e = s3_error_errno(err);

	return e ? -e : -EIO;
}

/* Frees a string that may hold a secret, wiping it first. */
static void creds_free_secret(char *s)
{
	if (!s)
		return;
	explicit_bzero(s, strlen(s));
	free(s);
}

static void creds_free_buf(char *buf, size_t len)
{
	if (!buf)
		return;
	explicit_bzero(buf, len);
	free(buf);
}

static const char *creds_getenv(const char *name)
{
	const char *v = getenv(name);

	return v && *v ? v : NULL;
}

static char *creds_strdup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *creds_strdup_printf(const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	return n < 0 ? NULL : s;
}

static char *creds_trim(char *s)
{
	char *e;

	while (*s && isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

/* Whether a value may go into an HTTP header line as it is. */
static bool creds_header_safe(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return false;
	return true;
}

void s3_credentials_clear(s3_credentials *c)
{
	if (!c)
		return;
	creds_free_secret(c->access_key);
	creds_free_secret(c->secret_key);
	creds_free_secret(c->session_token);
	memset(c, 0, sizeof(*c));
}

/* Sets credentials from three borrowed strings (token NULL or "" for none). */
static int creds_set(s3_credentials *c, const char *ak, const char *sk, const char *token)
{
	memset(c, 0, sizeof(*c));
	c->access_key = strdup(ak);
	c->secret_key = strdup(sk);
	if (token && *token)
		c->session_token = strdup(token);
	if (!c->access_key || !c->secret_key || (token && *token && !c->session_token)) {
		s3_credentials_clear(c);
		return -ENOMEM;
	}
	return 0;
}

static int creds_copy(const s3_credentials *src, s3_credentials *dst)
{
	int r = creds_set(dst, src->access_key, src->secret_key, src->session_token);

	dst->expiration = r ? 0 : src->expiration;
	return r;
}

/* ---------------------------------------------------------------- files */

/* Reads a whole regular file into a NUL-terminated buffer (wipe and free it
 * with creds_free_buf(buf, len + 1)).  Returns -ENOENT without a message when
 * the file does not exist, else a negative errno with errbuf filled. */
static int creds_read_file(const char *path, struct stat *st, char **buf, size_t *len, char *errbuf,
                           size_t errlen)
{
	size_t n = 0, size;
	char *b;
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		if (r != -ENOENT)
			creds_errf(errbuf, errlen, "cannot open %s: %s", path, strerror(-r));
		return r;
	}
	if (fstat(fd, st) < 0) {
		r = -errno;
		creds_errf(errbuf, errlen, "cannot stat %s: %s", path, strerror(-r));
		goto out_close;
	}
	if (!S_ISREG(st->st_mode)) {
		r = -EINVAL;
		creds_errf(errbuf, errlen, "%s is not a regular file", path);
		goto out_close;
	}
	if (st->st_size > CREDS_MAX_FILE) {
		r = -EFBIG;
		creds_errf(errbuf, errlen, "%s is larger than %d bytes", path, CREDS_MAX_FILE);
		goto out_close;
	}
	size = (size_t)st->st_size;
	b = malloc(size + 1);
	if (!b) {
		r = -ENOMEM;
		creds_errf(errbuf, errlen, "reading %s: out of memory", path);
		goto out_close;
	}
	while (n < size) {
		ssize_t got = read(fd, b + n, size - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			r = -errno;
			creds_errf(errbuf, errlen, "cannot read %s: %s", path, strerror(-r));
			creds_free_buf(b, size + 1);
			goto out_close;
		}
		if (got == 0)
			break; /* shrank meanwhile: take what is there */
		n += (size_t)got;
	}
	b[n] = '\0';
	if (memchr(b, '\0', n)) {
		r = -EINVAL;
		creds_errf(errbuf, errlen, "%s is not a text file", path);
		creds_free_buf(b, size + 1);
		goto out_close;
	}
	*buf = b;
	*len = n;
	r = 0;
out_close:
	close(fd);
	return r;
}

/* Cuts the next line out of [*pos, end) in place, blanks and CR trimmed;
 * *indent receives the number of leading blanks.  NULL at the end. */
static char *creds_next_line(char **pos, char *end, size_t *indent)
{
	char *s = *pos, *nl, *e;

	if (s >= end)
		return NULL;
	nl = memchr(s, '\n', (size_t)(end - s));
	e = nl ? nl : end;
	*pos = nl ? nl + 1 : end;
	*e = '\0';
	*indent = strspn(s, " \t");
	return creds_trim(s);
}

/* ---------------------------------------------------------------- passwd files */

/* s3fs's formats: "ACCESSKEY:SECRET" (any bucket) or "BUCKET:ACCESSKEY:SECRET";
 * '#' comments and blank lines.  Returns 1 with *out set, 0 when no line
 * applies to `bucket`, or -EINVAL with errbuf filled (never quoting a line:
 * it may hold a secret). */
static int creds_parse_passwd(char *buf, size_t len, const char *path, const char *bucket,
                              s3_credentials *out, char *errbuf, size_t errlen)
{
	const char *def_ak = NULL, *def_sk = NULL, *b_ak = NULL, *b_sk = NULL;
	char *pos = buf, *line;
	size_t indent;
	int lineno = 0;

	while ((line = creds_next_line(&pos, buf + len, &indent))) {
		char *f[3] = {line}, *c = line;
		int n = 1;

		lineno++;
		if (!*line || *line == '#')
			continue;
		while ((c = strchr(c, ':'))) {
			if (n == 3)
				goto bad;
			*c++ = '\0';
			f[n++] = c;
		}
		if (n < 2)
			goto bad;
		for (int i = 0; i < n; i++)
			if (!*f[i] || strpbrk(f[i], " \t\r\v\f"))
				goto bad;
		if (n == 2) {
			/* s3fs refuses an ambiguous file; so do we. */
			if (def_ak) {
				creds_errf(errbuf, errlen,
				           "passwd file %s has more than one ACCESSKEY:SECRET line "
				           "without a bucket (line %d)",
				           path, lineno);
				return -EINVAL;
			}
			def_ak = f[0];
			def_sk = f[1];
		} else if (bucket && !b_ak && strcmp(f[0], bucket) == 0) {
			b_ak = f[1];
			b_sk = f[2];
		}
		continue;
	bad:
		creds_errf(errbuf, errlen,
		           "passwd file %s line %d: expected ACCESSKEY:SECRET or "
		           "BUCKET:ACCESSKEY:SECRET",
		           path, lineno);
		return -EINVAL;
	}
	if (b_ak)
		return creds_set(out, b_ak, b_sk, NULL) ? -ENOMEM : 1;
	if (def_ak)
		return creds_set(out, def_ak, def_sk, NULL) ? -ENOMEM : 1;
	return 0;
}

/* Returns 1 with *out set, 0 when the file is absent (and !required) or has
 * no line for the bucket (and !required), else a negative errno. */
static int creds_passwd_file(const char *path, const char *bucket, bool required,
                             s3_credentials *out, char *errbuf, size_t errlen)
{
	struct stat st;
	char *buf;
	size_t len;
	int r;

	r = creds_read_file(path, &st, &buf, &len, errbuf, errlen);
	if (r == -ENOENT && !required)
		return 0;
	if (r == -ENOENT)
		creds_errf(errbuf, errlen, "passwd file %s does not exist", path);
	if (r < 0)
		return r;
	if (st.st_mode & (S_IRWXG | S_IRWXO)) {
		creds_errf(errbuf, errlen,
		           "passwd file %s has mode %04o: it must not be readable by group or "
		           "others (chmod 600)",
		           path, (unsigned)(st.st_mode & 07777));
		creds_free_buf(buf, len + 1);
		return -EACCES;
	}
	r = creds_parse_passwd(buf, len, path, bucket, out, errbuf, errlen);
	creds_free_buf(buf, len + 1);
	if (r == -ENOMEM)
		creds_errf(errbuf, errlen, "reading %s: out of memory", path);
	if (r == 0 && required) {
		creds_errf(errbuf, errlen, "passwd file %s has no credentials for bucket %s", path,
		           bucket ? bucket : "(none)");
		return -ENOENT;
	}
	return r;
}

/* ---------------------------------------------------------------- AWS shared files */

/* What one file says about one profile. */
struct creds_ini_vals {
	bool found; /* the profile's section exists */
	char *ak, *sk, *token, *region;
	const char *unsupported; /* a key naming a source bucketfs cannot use */
};

static void creds_ini_vals_clear(struct creds_ini_vals *v)
{
	creds_free_secret(v->ak);
	creds_free_secret(v->sk);
	creds_free_secret(v->token);
	free(v->region);
	memset(v, 0, sizeof(*v));
}

static int creds_ini_set(char **dst, const char *value)
{
	char *v = NULL;

	if (*value && !(v = strdup(value)))
		return -ENOMEM;
	creds_free_secret(*dst);
	*dst = v;
	return 0;
}

/* Whether a section header names the profile: "[NAME]" in the credentials
 * file, "[profile NAME]" (or "[default]") in the config file. */
static bool creds_ini_section_matches(char *header, const char *profile, bool config)
{
	if (!config)
		return strcmp(header, profile) == 0;
	if (strcmp(profile, "default") == 0 && strcmp(header, "default") == 0)
		return true;
	if (strncmp(header, "profile", 7) != 0 || !isblank((unsigned char)header[7]))
		return false;
	return strcmp(creds_trim(header + 8), profile) == 0;
}

/* The subset of Python's configparser that `aws configure` writes and
 * botocore reads: [sections], NAME = VALUE or NAME: VALUE, '#' and ';'
 * comments, and lines indented deeper than the key above them continuing it
 * (nested settings such as "s3 =\n  region = x" are not the profile's). */
static int creds_ini_parse(char *buf, size_t len, const char *path, const char *profile,
                           bool config, struct creds_ini_vals *v, char *errbuf, size_t errlen)
{
	static const char *const unsupported[] = {
	        "role_arn",    "credential_process", "credential_source",
	        "sso_session", "sso_start_url",      "web_identity_token_file",
	};
	char *pos = buf, *line;
	bool in_section = false, have_key = false;
	size_t indent, key_indent = 0;
	int lineno = 0, r = 0;

	while ((line = creds_next_line(&pos, buf + len, &indent))) {
		char *delim, *key, *value;

		lineno++;
		if (!*line || *line == '#' || *line == ';')
			continue;
		if (have_key && indent > key_indent)
			continue;
		if (*line == '[') {
			size_t n = strlen(line);
			if (line[n - 1] != ']')
				goto bad;
			line[n - 1] = '\0';
			in_section =
			        creds_ini_section_matches(creds_trim(line + 1), profile, config);
			v->found |= in_section;
			have_key = false;
			continue;
		}
		delim = strpbrk(line, "=:");
		if (!delim || delim == line)
			goto bad;
		*delim = '\0';
		key = creds_trim(line);
		value = creds_trim(delim + 1);
		have_key = true;
		key_indent = indent;
		if (!in_section)
			continue;
		if (strcasecmp(key, "aws_access_key_id") == 0)
			r = creds_ini_set(&v->ak, value);
		else if (strcasecmp(key, "aws_secret_access_key") == 0)
			r = creds_ini_set(&v->sk, value);
		else if (strcasecmp(key, "aws_session_token") == 0)
			r = creds_ini_set(&v->token, value);
		else if (strcasecmp(key, "region") == 0)
			r = creds_ini_set(&v->region, value);
		for (size_t i = 0; i < sizeof(unsupported) / sizeof(unsupported[0]); i++)
			if (strcasecmp(key, unsupported[i]) == 0)
				v->unsupported = unsupported[i];
		if (r) {
			creds_errf(errbuf, errlen, "reading %s: out of memory", path);
			return r;
		}
	}
	return 0;
bad:
	creds_errf(errbuf, errlen, "%s line %d: expected [SECTION] or NAME = VALUE", path, lineno);
	return -EINVAL;
}

static int creds_ini_load(const char *path, const char *profile, bool config,
                          struct creds_ini_vals *v, char *errbuf, size_t errlen)
{
	struct stat st;
	char *buf;
	size_t len;
	int r;

	if (!path)
		return 0;
	r = creds_read_file(path, &st, &buf, &len, errbuf, errlen);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	r = creds_ini_parse(buf, len, path, profile, config, v, errbuf, errlen);
	creds_free_buf(buf, len + 1);
	return r;
}

/* ---------------------------------------------------------------- JSON */

/* A strict reader of the flat JSON objects ECS and IMDS answer with: RFC 8259
 * syntax throughout, top-level string fields extracted (escapes decoded,
 * \u0000 refused), other values checked and skipped. */
struct creds_json_field {
	const char *name;
	char *value; /* malloc'd, NULL when absent */
};

static void creds_json_ws(const char *b, size_t n, size_t *i)
{
	while (*i < n && (b[*i] == ' ' || b[*i] == '\t' || b[*i] == '\n' || b[*i] == '\r'))
		(*i)++;
}

static int creds_json_hex4(const char *b, size_t end, size_t i, unsigned *out)
{
	unsigned v = 0;

	if (i > end || end - i < 4)
		return -1;
	for (size_t k = i; k < i + 4; k++) {
		int c = (unsigned char)b[k], d;
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			return -1;
		v = v << 4 | (unsigned)d;
	}
	*out = v;
	return 0;
}

static char *creds_json_utf8(char *o, unsigned cp)
{
	if (cp < 0x80) {
		*o++ = (char)cp;
	} else if (cp < 0x800) {
		*o++ = (char)(0xc0 | cp >> 6);
		*o++ = (char)(0x80 | (cp & 0x3f));
	} else if (cp < 0x10000) {
		*o++ = (char)(0xe0 | cp >> 12);
		*o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
		*o++ = (char)(0x80 | (cp & 0x3f));
	} else {
		*o++ = (char)(0xf0 | cp >> 18);
		*o++ = (char)(0x80 | ((cp >> 12) & 0x3f));
		*o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
		*o++ = (char)(0x80 | (cp & 0x3f));
	}
	return o;
}

/* The string starting at b[*i] == '"'; decoded into *out (malloc'd) unless
 * out is NULL.  Decoding never grows a string, so the raw length is enough. */
static int creds_json_string(const char *b, size_t n, size_t *i, char **out)
{
	size_t j = *i + 1, end = j, size;
	char *s = NULL, *o = NULL;

	while (end < n && b[end] != '"')
		end += b[end] == '\\' ? 2 : 1;
	if (end >= n)
		return -EPROTO;
	size = end - j + 1;
	if (out) {
		s = o = malloc(size);
		if (!s)
			return -ENOMEM;
	}
	while (j < end) {
		unsigned char c = (unsigned char)b[j++];
		unsigned cp, lo;

		if (c < 0x20)
			goto bad;
		if (c != '\\') {
			if (o)
				*o++ = (char)c;
			continue;
		}
		c = (unsigned char)b[j++];
		switch (c) {
		case '"':
		case '\\':
		case '/':
			break;
		case 'b':
			c = '\b';
			break;
		case 'f':
			c = '\f';
			break;
		case 'n':
			c = '\n';
			break;
		case 'r':
			c = '\r';
			break;
		case 't':
			c = '\t';
			break;
		case 'u':
			if (creds_json_hex4(b, end, j, &cp))
				goto bad;
			j += 4;
			if (cp >= 0xdc00 && cp <= 0xdfff)
				goto bad; /* a low surrogate alone */
			if (cp >= 0xd800 && cp <= 0xdbff) {
				if (end - j < 6 || b[j] != '\\' || b[j + 1] != 'u' ||
				    creds_json_hex4(b, end, j + 2, &lo) || lo < 0xdc00 ||
				    lo > 0xdfff)
					goto bad;
				j += 6;
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
			}
			if (cp == 0)
				goto bad; /* would cut the C string short */
			if (o)
				o = creds_json_utf8(o, cp);
			continue;
		default:
			goto bad;
		}
		if (o)
			*o++ = (char)c;
	}
	*i = end + 1;
	if (out) {
		*o = '\0';
		*out = s;
	}
	return 0;
bad:
	creds_free_buf(s, size);
	return -EPROTO;
}

static int creds_json_literal(const char *b, size_t n, size_t *i, const char *lit)
{
	size_t l = strlen(lit);

	if (n - *i < l || memcmp(b + *i, lit, l) != 0)
		return -EPROTO;
	*i += l;
	return 0;
}

static int creds_json_number(const char *b, size_t n, size_t *i)
{
	size_t j = *i, d;

	if (j < n && b[j] == '-')
		j++;
	if (j < n && b[j] == '0') {
		j++;
	} else {
		for (d = j; j < n && isdigit((unsigned char)b[j]); j++)
			;
		if (j == d)
			return -EPROTO;
	}
	if (j < n && b[j] == '.') {
		for (d = ++j; j < n && isdigit((unsigned char)b[j]); j++)
			;
		if (j == d)
			return -EPROTO;
	}
	if (j < n && (b[j] == 'e' || b[j] == 'E')) {
		j++;
		if (j < n && (b[j] == '+' || b[j] == '-'))
			j++;
		for (d = j; j < n && isdigit((unsigned char)b[j]); j++)
			;
		if (j == d)
			return -EPROTO;
	}
	*i = j;
	return 0;
}

/* Checks and skips any value; arrays and objects to a bounded depth. */
static int creds_json_skip(const char *b, size_t n, size_t *i, int depth)
{
	char close;
	int r;

	if (*i >= n)
		return -EPROTO;
	switch (b[*i]) {
	case '"':
		return creds_json_string(b, n, i, NULL);
	case 't':
		return creds_json_literal(b, n, i, "true");
	case 'f':
		return creds_json_literal(b, n, i, "false");
	case 'n':
		return creds_json_literal(b, n, i, "null");
	case '{':
	case '[':
		break;
	default:
		return creds_json_number(b, n, i);
	}
	if (depth >= CREDS_JSON_MAX_DEPTH)
		return -EPROTO;
	close = b[*i] == '{' ? '}' : ']';
	(*i)++;
	creds_json_ws(b, n, i);
	if (*i < n && b[*i] == close) {
		(*i)++;
		return 0;
	}
	for (;;) {
		if (close == '}') {
			if (*i >= n || b[*i] != '"')
				return -EPROTO;
			r = creds_json_string(b, n, i, NULL);
			if (r)
				return r;
			creds_json_ws(b, n, i);
			if (*i >= n || b[*i] != ':')
				return -EPROTO;
			(*i)++;
			creds_json_ws(b, n, i);
		}
		r = creds_json_skip(b, n, i, depth + 1);
		if (r)
			return r;
		creds_json_ws(b, n, i);
		if (*i >= n)
			return -EPROTO;
		if (b[*i] == close) {
			(*i)++;
			return 0;
		}
		if (b[*i] != ',')
			return -EPROTO;
		(*i)++;
		creds_json_ws(b, n, i);
	}
}

/* Fills f[].value from the top-level object in buf.  A wanted field must be
 * a string and appear at most once.  Returns 0, -EPROTO or -ENOMEM; on
 * failure every value is NULL. */
static int creds_json_fields(const char *b, size_t n, struct creds_json_field *f, size_t nf)
{
	size_t i = 0;
	int r = -EPROTO;

	for (size_t k = 0; k < nf; k++)
		f[k].value = NULL;
	creds_json_ws(b, n, &i);
	if (i >= n || b[i++] != '{')
		goto fail;
	creds_json_ws(b, n, &i);
	if (i < n && b[i] == '}') {
		i++;
		goto end;
	}
	for (;;) {
		struct creds_json_field *want = NULL;
		char *key;

		if (i >= n || b[i] != '"')
			goto fail;
		r = creds_json_string(b, n, &i, &key);
		if (r)
			goto fail;
		for (size_t k = 0; k < nf && !want; k++)
			if (strcmp(key, f[k].name) == 0)
				want = &f[k];
		free(key);
		r = -EPROTO;
		creds_json_ws(b, n, &i);
		if (i >= n || b[i++] != ':')
			goto fail;
		creds_json_ws(b, n, &i);
		if (want && (want->value || i >= n || b[i] != '"'))
			goto fail;
		r = want ? creds_json_string(b, n, &i, &want->value) : creds_json_skip(b, n, &i, 1);
		if (r)
			goto fail;
		r = -EPROTO;
		creds_json_ws(b, n, &i);
		if (i >= n)
			goto fail;
		if (b[i] == '}') {
			i++;
			break;
		}
		if (b[i++] != ',')
			goto fail;
		creds_json_ws(b, n, &i);
	}
end:
	creds_json_ws(b, n, &i);
	if (i == n)
		return 0;
	r = -EPROTO;
fail:
	for (size_t k = 0; k < nf; k++) {
		creds_free_secret(f[k].value);
		f[k].value = NULL;
	}
	return r;
}

/* ---------------------------------------------------------------- HTTP */

struct creds_body {
	char *buf; /* CREDS_MAX_BODY + 1 bytes */
	size_t len;
};

static size_t creds_http_write(char *data, size_t size, size_t nmemb, void *ctx)
{
	struct creds_body *b = ctx;
	size_t n = size * nmemb;

	if (n > CREDS_MAX_BODY - b->len)
		return 0; /* too big: curl fails with CURLE_WRITE_ERROR */
	memcpy(b->buf + b->len, data, n);
	b->len += n;
	b->buf[b->len] = '\0';
	return n;
}

/* One request to a metadata endpoint.  Returns 0 on a 2xx answer with *body
 * (NUL-terminated, free with creds_free_buf(*body, *len + 1)), else a
 * negative errno with err filled. */
static int creds_http(const char *method, const char *url, struct curl_slist *headers, char **body,
                      size_t *len, s3_error *err)
{
	struct creds_body b = {0};
	CURLcode cc;
	long status = 0;
	CURL *h;
	int r;

	h = curl_easy_init();
	b.buf = malloc(CREDS_MAX_BODY + 1);
	if (!h || !b.buf) {
		creds_set_error(err, ENOMEM, 0, 0, "%s %s: out of memory", method, url);
		r = -ENOMEM;
		goto out;
	}
	b.buf[0] = '\0';
	curl_easy_setopt(h, CURLOPT_URL, url);
	if (strcmp(method, "GET") != 0)
		curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, creds_http_write);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)CREDS_CONNECT_TIMEOUT_MS);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)CREDS_TIMEOUT_MS);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	/* Metadata endpoints are link-local or loopback: a proxy from the
	 * environment must not see the tokens and credentials. */
	curl_easy_setopt(h, CURLOPT_PROXY, "");
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	cc = curl_easy_perform(h);
	if (cc != CURLE_OK) {
		creds_set_error(err, 0, cc, 0, "%s %s: %s", method, url, curl_easy_strerror(cc));
		r = creds_err_result(err);
		goto out;
	}
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	if (status < 200 || status > 299) {
		creds_set_error(err, EIO, 0, status, "%s %s: HTTP %ld", method, url, status);
		r = -EIO;
		goto out;
	}
	*body = b.buf;
	*len = b.len;
	b.buf = NULL;
	r = 0;
out:
	creds_free_buf(b.buf, CREDS_MAX_BODY + 1);
	if (h)
		curl_easy_cleanup(h);
	return r;
}

/* A GET or PUT with at most one extra header, "NAME: VALUE" built from two
 * parts so that a secret value is wiped after use. */
static int creds_http1(const char *method, const char *url, const char *hname, const char *hvalue,
                       char **body, size_t *len, s3_error *err)
{
	struct curl_slist *headers = NULL, *tmp;
	char *line = NULL;
	int r;

	if (hname) {
		line = creds_strdup_printf("%s: %s", hname, hvalue);
		tmp = line ? curl_slist_append(NULL, line) : NULL;
		creds_free_secret(line);
		if (!tmp) {
			creds_set_error(err, ENOMEM, 0, 0, "%s %s: out of memory", method, url);
			return -ENOMEM;
		}
		headers = tmp;
	}
	r = creds_http(method, url, headers, body, len, err);
	curl_slist_free_all(headers);
	return r;
}

/* A copy of an endpoint's value fit to quote in a log line: at most
 * len - 1 bytes, control characters (line breaks, terminal escapes) as '?'. */
static const char *creds_printable(const char *s, char *buf, size_t len)
{
	size_t n = 0;

	for (; *s && n + 1 < len; s++)
		buf[n++] = (unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s;
	buf[n] = '\0';
	return buf;
}

/* Credentials out of an ECS or IMDS answer.  `what` names the source in
 * error messages, which never quote the body (only Code and Expiration,
 * which are not secret, cut short and made printable). */
static int creds_from_json(const char *body, size_t len, bool imds, const char *what,
                           s3_credentials *out, int64_t *expires_ns, s3_error *err)
{
	struct creds_json_field f[] = {
	        {"AccessKeyId", NULL}, {"SecretAccessKey", NULL},
	        {"Token", NULL},       {"Expiration", NULL},
	        {"Code", NULL},
	};
	const size_t nf = sizeof(f) / sizeof(f[0]);
	char quoted[41];
	int64_t exp;
	int r;

	r = creds_json_fields(body, len, f, nf);
	if (r) {
		creds_set_error(err, r == -ENOMEM ? ENOMEM : EPROTO, 0, 0,
		                "%s: malformed JSON response", what);
		return r;
	}
	r = -EPROTO;
	if (imds && (!f[4].value || strcmp(f[4].value, "Success") != 0)) {
		creds_set_error(err, EPROTO, 0, 0, "%s: Code is %s, not Success", what,
		                f[4].value ? creds_printable(f[4].value, quoted, sizeof(quoted))
		                           : "missing");
		goto out;
	}
	for (size_t k = 0; k < 4; k++) {
		if (!f[k].value || !*f[k].value) {
			creds_set_error(err, EPROTO, 0, 0, "%s: the response has no %s", what,
			                f[k].name);
			goto out;
		}
	}
	exp = s3_parse_iso8601(f[3].value);
	if (exp < 0) {
		creds_set_error(err, EPROTO, 0, 0, "%s: bad Expiration \"%s\"", what,
		                creds_printable(f[3].value, quoted, sizeof(quoted)));
		goto out;
	}
	/* Already expired: a clock far off, or a broken endpoint.  Taking them
	 * would make every later call refresh again. */
	if (exp <= creds_now_ns()) {
		creds_set_error(err, EPROTO, 0, 0,
		                "%s: the credentials expired already (Expiration %.40s; is the "
		                "clock right?)",
		                what, f[3].value);
		goto out;
	}
	memset(out, 0, sizeof(*out));
	out->access_key = f[0].value;
	out->secret_key = f[1].value;
	out->session_token = f[2].value;
	out->expiration = (time_t)(exp / CREDS_NS_PER_S);
	f[0].value = f[1].value = f[2].value = NULL;
	*expires_ns = exp;
	r = 0;
out:
	for (size_t k = 0; k < nf; k++)
		creds_free_secret(f[k].value);
	return r;
}

/* ---------------------------------------------------------------- ECS and IMDS */

static int creds_fetch_ecs(const s3_cred_provider *p, s3_credentials *out, int64_t *expires_ns,
                           s3_error *err)
{
	char *token = NULL, *body = NULL, errbuf[200];
	const char *hvalue = p->ecs_token;
	size_t len = 0, token_len = 0;
	struct stat st;
	int r;

	/* EKS rotates the token file, so it is read anew every time. */
	if (p->ecs_token_file) {
		r = creds_read_file(p->ecs_token_file, &st, &token, &token_len, errbuf,
		                    sizeof(errbuf));
		if (r == -ENOENT)
			creds_errf(errbuf, sizeof(errbuf), "%s does not exist", p->ecs_token_file);
		if (r) {
			creds_set_error(err, -r, 0, 0, "ECS container token: %s", errbuf);
			return r;
		}
		hvalue = creds_trim(token);
	}
	if (hvalue && !creds_header_safe(hvalue)) {
		creds_set_error(err, EINVAL, 0, 0,
		                "ECS container: the authorization token holds control characters");
		r = -EINVAL;
		goto out;
	}
	r = creds_http1("GET", p->url, hvalue ? "Authorization" : NULL, hvalue, &body, &len, err);
	if (r)
		goto out;
	r = creds_from_json(body, len, false, p->url, out, expires_ns, err);
	creds_free_buf(body, len + 1);
out:
	creds_free_buf(token, token_len + 1);
	return r;
}

/* IAM role names are [A-Za-z0-9+=,.@_-]+; anything else would change the
 * URL it is put into. */
static bool creds_role_valid(const char *role)
{
	if (!*role || strlen(role) > 128)
		return false;
	for (; *role; role++)
		if (!isalnum((unsigned char)*role) && !strchr("+=,.@_-", *role))
			return false;
	return true;
}

/* IMDSv2: a session token first, then the role (when not known yet), then
 * its credentials and, when asked for, the region. */
static int creds_fetch_imds(const s3_cred_provider *p, s3_credentials *out, int64_t *expires_ns,
                            char **role_out, char **region_out, s3_error *err)
{
	static const char tok_hdr[] = "X-aws-ec2-metadata-token";
	char *url = NULL, *token = NULL, *body = NULL, *role = NULL;
	const char *use_role = p->role;
	size_t len = 0, token_len = 0;
	int r;

	url = creds_strdup_printf("%s%s", p->url, CREDS_IMDS_TOKEN_PATH);
	if (!url)
		goto nomem;
	r = creds_http1("PUT", url, "X-aws-ec2-metadata-token-ttl-seconds", "21600", &token,
	                &token_len, err);
	if (r)
		goto out;
	if (!*creds_trim(token) || !creds_header_safe(creds_trim(token))) {
		creds_set_error(err, EPROTO, 0, 0, "PUT %s: unusable token", url);
		r = -EPROTO;
		goto out;
	}

	if (!use_role) {
		free(url);
		url = creds_strdup_printf("%s%s", p->url, CREDS_IMDS_CREDS_PATH);
		if (!url)
			goto nomem;
		r = creds_http1("GET", url, tok_hdr, creds_trim(token), &body, &len, err);
		if (r)
			goto out;
		body[strcspn(body, "\r\n")] = '\0';
		if (!creds_role_valid(creds_trim(body))) {
			creds_set_error(err, EPROTO, 0, 0, "GET %s: no valid role name", url);
			r = -EPROTO;
			goto out;
		}
		role = strdup(creds_trim(body));
		if (!role)
			goto nomem;
		use_role = role;
		creds_free_buf(body, len + 1);
		body = NULL;
	}

	free(url);
	url = creds_strdup_printf("%s%s%s", p->url, CREDS_IMDS_CREDS_PATH, use_role);
	if (!url)
		goto nomem;
	r = creds_http1("GET", url, tok_hdr, creds_trim(token), &body, &len, err);
	if (r)
		goto out;
	r = creds_from_json(body, len, true, url, out, expires_ns, err);
	if (r)
		goto out;

	if (region_out) {
		s3_error rerr;
		char *rbody = NULL;
		size_t rlen = 0;

		free(url);
		url = creds_strdup_printf("%s%s", p->url, CREDS_IMDS_REGION);
		if (url && creds_http1("GET", url, tok_hdr, creds_trim(token), &rbody, &rlen,
		                       &rerr) == 0) {
			*region_out = *creds_trim(rbody) ? strdup(creds_trim(rbody)) : NULL;
		} else {
			creds_log(p, S3_LOG_WARNING, "credentials: no region from %s: %s", p->url,
			          url ? rerr.message : "out of memory");
		}
		creds_free_buf(rbody, rlen + 1);
	}
	if (role_out) {
		*role_out = role;
		role = NULL;
	}
	r = 0;
	goto out;
nomem:
	creds_set_error(err, ENOMEM, 0, 0, "EC2 instance metadata: out of memory");
	r = -ENOMEM;
out:
	creds_free_buf(body, len + 1);
	creds_free_buf(token, token_len + 1);
	free(role);
	free(url);
	return r;
}

static int creds_fetch(const s3_cred_provider *p, s3_credentials *out, int64_t *expires_ns,
                       char **role_out, char **region_out, s3_error *err)
{
	if (p->kind == CREDS_ECS)
		return creds_fetch_ecs(p, out, expires_ns, err);
	return creds_fetch_imds(p, out, expires_ns, role_out, region_out, err);
}

/* Installs fresh credentials; called with the lock held (or before the
 * provider is shared). */
static void creds_install(s3_cred_provider *p, s3_credentials *fresh, int64_t expires_ns)
{
	s3_credentials_clear(&p->cur);
	p->cur = *fresh;
	memset(fresh, 0, sizeof(*fresh));
	p->expires_ns = expires_ns;
	p->obtained_ns = creds_now_ns();
}

/* ---------------------------------------------------------------- the chain */

struct creds_chain {
	s3_cred_provider *p;
	const s3_cred_options *opts;
	char *errbuf;
	size_t errlen;
	char looked[1024]; /* "passwd_file option, environment (...), ..." */
	size_t looked_n;
};

__attribute__((format(printf, 2, 3))) static void creds_looked(struct creds_chain *ch,
                                                               const char *fmt, ...)
{
	va_list ap;
	int n;

	if (ch->looked_n >= sizeof(ch->looked) - 1)
		return;
	if (ch->looked_n) {
		n = snprintf(ch->looked + ch->looked_n, sizeof(ch->looked) - ch->looked_n, ", ");
		ch->looked_n += (size_t)n;
		if (ch->looked_n >= sizeof(ch->looked) - 1)
			return;
	}
	va_start(ap, fmt);
	n = vsnprintf(ch->looked + ch->looked_n, sizeof(ch->looked) - ch->looked_n, fmt, ap);
	va_end(ap);
	if (n > 0)
		ch->looked_n += (size_t)n;
}

/* Takes the static credentials and names their source.  Returns 1 or -ENOMEM. */
static int creds_use_static(struct creds_chain *ch, s3_credentials *c, char *source)
{
	if (!source) {
		s3_credentials_clear(c);
		creds_errf(ch->errbuf, ch->errlen, "credentials: out of memory");
		return -ENOMEM;
	}
	ch->p->source = source;
	creds_install(ch->p, c, 0);
	return 1;
}

static int creds_from_passwd(struct creds_chain *ch, const char *path, bool required)
{
	s3_credentials c = {0};
	int r;

	r = creds_passwd_file(path, ch->opts->bucket, required, &c, ch->errbuf, ch->errlen);
	if (r <= 0)
		return r;
	return creds_use_static(ch, &c, creds_strdup_printf("passwd_file %s", path));
}

static int creds_from_env(struct creds_chain *ch)
{
	const char *ak = creds_getenv("AWS_ACCESS_KEY_ID");
	const char *sk = creds_getenv("AWS_SECRET_ACCESS_KEY");
	s3_credentials c;

	creds_looked(ch, "environment (AWS_ACCESS_KEY_ID)");
	if (!ak && !sk)
		return 0;
	if (!ak || !sk) {
		creds_errf(ch->errbuf, ch->errlen, "environment: %s is set but %s is not",
		           ak ? "AWS_ACCESS_KEY_ID" : "AWS_SECRET_ACCESS_KEY",
		           ak ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID");
		return -EINVAL;
	}
	if (creds_set(&c, ak, sk, creds_getenv("AWS_SESSION_TOKEN"))) {
		creds_errf(ch->errbuf, ch->errlen, "credentials: out of memory");
		return -ENOMEM;
	}
	return creds_use_static(ch, &c, strdup("environment"));
}

struct creds_profile {
	const char *name;
	bool explicit_;                /* named by the option or AWS_PROFILE */
	char *cred_path, *config_path; /* NULL when there is no HOME */
	struct creds_ini_vals cred, config;
};

static void creds_profile_clear(struct creds_profile *pr)
{
	free(pr->cred_path);
	free(pr->config_path);
	creds_ini_vals_clear(&pr->cred);
	creds_ini_vals_clear(&pr->config);
}

/* Reads the profile from both files.  Done up front because its region
 * matters whichever source the credentials come from; an unreadable file is
 * an error only if the chain gets as far as the profile. */
/* $ENV_NAME, else HOME/SUFFIX, else NULL (no HOME).  -ENOMEM or 0. */
static int creds_aws_path(const char *env_name, const char *home, const char *suffix, char **out)
{
	const char *env = creds_getenv(env_name);

	*out = NULL;
	if (env)
		*out = strdup(env);
	else if (home)
		*out = creds_strdup_printf("%s/%s", home, suffix);
	return (env || home) && !*out ? -ENOMEM : 0;
}

static int creds_profile_load(const s3_cred_options *opts, const char *home,
                              struct creds_profile *pr, char *errbuf, size_t errlen)
{
	int r;

	memset(pr, 0, sizeof(*pr));
	pr->name = opts->profile && *opts->profile ? opts->profile : creds_getenv("AWS_PROFILE");
	pr->explicit_ = pr->name != NULL;
	if (!pr->name)
		pr->name = "default";
	if (creds_aws_path("AWS_SHARED_CREDENTIALS_FILE", home, ".aws/credentials",
	                   &pr->cred_path) ||
	    creds_aws_path("AWS_CONFIG_FILE", home, ".aws/config", &pr->config_path)) {
		creds_errf(errbuf, errlen, "credentials: out of memory");
		return -ENOMEM;
	}
	r = creds_ini_load(pr->cred_path, pr->name, false, &pr->cred, errbuf, errlen);
	if (!r)
		r = creds_ini_load(pr->config_path, pr->name, true, &pr->config, errbuf, errlen);
	return r;
}

static int creds_from_profile(struct creds_chain *ch, struct creds_profile *pr)
{
	const char *cpath = pr->cred_path ? pr->cred_path : "~/.aws/credentials (HOME not set)";
	const char *fpath = pr->config_path ? pr->config_path : "~/.aws/config (HOME not set)";
	struct creds_ini_vals *files[2] = {&pr->cred, &pr->config};
	const char *paths[2] = {cpath, fpath};
	const char *unsupported = NULL;
	s3_credentials c;

	creds_looked(ch, "profile %s in %s and %s", pr->name, cpath, fpath);
	if (!pr->cred.found && !pr->config.found) {
		if (!pr->explicit_)
			return 0;
		creds_errf(ch->errbuf, ch->errlen, "profile %s not found in %s or %s", pr->name,
		           cpath, fpath);
		return -ENOENT;
	}
	/* As botocore does: the credentials file first, and a file's key pair
	 * is taken whole, never mixed with the other file's. */
	for (int i = 0; i < 2; i++) {
		struct creds_ini_vals *v = files[i];

		if (!v->ak && !v->sk) {
			unsupported = unsupported ? unsupported : v->unsupported;
			continue;
		}
		if (!v->ak || !v->sk) {
			creds_errf(ch->errbuf, ch->errlen, "profile %s in %s has %s but not %s",
			           pr->name, paths[i],
			           v->ak ? "aws_access_key_id" : "aws_secret_access_key",
			           v->ak ? "aws_secret_access_key" : "aws_access_key_id");
			return -EINVAL;
		}
		if (creds_set(&c, v->ak, v->sk, v->token)) {
			creds_errf(ch->errbuf, ch->errlen, "credentials: out of memory");
			return -ENOMEM;
		}
		return creds_use_static(ch, &c, creds_strdup_printf("profile %s", pr->name));
	}
	if (unsupported && pr->explicit_) {
		/* Going on would sign as someone other than the profile says. */
		creds_errf(ch->errbuf, ch->errlen,
		           "profile %s uses %s, which bucketfs does not support; give it "
		           "aws_access_key_id and aws_secret_access_key",
		           pr->name, unsupported);
		return -ENOTSUP;
	}
	if (unsupported)
		creds_log(ch->p, S3_LOG_WARNING,
		          "credentials: profile %s uses %s, which bucketfs does not support; "
		          "looking further",
		          pr->name, unsupported);
	return 0;
}

static int creds_from_home_passwd(struct creds_chain *ch, const char *home)
{
	char *path;
	int r;

	if (!home) {
		creds_looked(ch, "~/.passwd-s3fs (HOME not set)");
		return 0;
	}
	path = creds_strdup_printf("%s/.passwd-s3fs", home);
	if (!path) {
		creds_errf(ch->errbuf, ch->errlen, "credentials: out of memory");
		return -ENOMEM;
	}
	creds_looked(ch, "%s", path);
	r = creds_from_passwd(ch, path, false);
	free(path);
	return r;
}

/* AWS SDKs send the container token only to https or to the addresses ECS
 * and EKS use; anywhere else it could be stolen. */
static bool creds_ecs_url_allowed(const char *url)
{
	static const char *const hosts[] = {
	        "localhost", "169.254.170.2", "169.254.170.23", "[::1]", "[fd00:ec2::23]",
	};
	char *scheme = NULL, *host = NULL;
	bool ok = false;
	CURLU *u;

	u = curl_url();
	if (!u || curl_url_set(u, CURLUPART_URL, url, 0) ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0))
		goto out;
	if (strcasecmp(scheme, "https") == 0) {
		ok = true;
	} else if (strcasecmp(scheme, "http") == 0) {
		ok = strncmp(host, "127.", 4) == 0 && strspn(host, "0123456789.") == strlen(host);
		for (size_t i = 0; i < sizeof(hosts) / sizeof(hosts[0]) && !ok; i++)
			ok = strcasecmp(host, hosts[i]) == 0;
	}
out:
	curl_free(scheme);
	curl_free(host);
	curl_url_cleanup(u);
	return ok;
}

static int creds_from_ecs(struct creds_chain *ch)
{
	const char *rel = creds_getenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
	const char *full = creds_getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI");
	const char *tfile = creds_getenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
	const char *token = creds_getenv("AWS_CONTAINER_AUTHORIZATION_TOKEN");
	s3_cred_provider *p = ch->p;
	s3_credentials c;
	int64_t exp;
	s3_error err;
	int r;

	creds_looked(ch, "ECS container endpoint");
	if (!rel && !full)
		return 0;
	if (rel) {
		p->url = creds_strdup_printf("%s%s%s", CREDS_ECS_BASE, *rel == '/' ? "" : "/", rel);
	} else {
		if (!creds_ecs_url_allowed(full)) {
			creds_errf(ch->errbuf, ch->errlen,
			           "AWS_CONTAINER_CREDENTIALS_FULL_URI %s: only https, loopback "
			           "and the ECS/EKS addresses are allowed",
			           full);
			return -EINVAL;
		}
		p->url = strdup(full);
	}
	if (tfile)
		p->ecs_token_file = strdup(tfile);
	else if (token)
		p->ecs_token = strdup(token);
	p->source = strdup("ECS container");
	if (!p->url || (tfile && !p->ecs_token_file) || (!tfile && token && !p->ecs_token) ||
	    !p->source) {
		creds_errf(ch->errbuf, ch->errlen, "credentials: out of memory");
		return -ENOMEM;
	}
	p->kind = CREDS_ECS;
	/* The container says where its credentials are: failing to get them is
	 * an error, not a reason to try the instance's. */
	r = creds_fetch(p, &c, &exp, NULL, NULL, &err);
	if (r) {
		creds_errf(ch->errbuf, ch->errlen, "ECS container credentials: %s", err.message);
		return r;
	}
	creds_install(p, &c, exp);
	return 1;
}

static int creds_from_imds(struct creds_chain *ch)
{
	const char *disabled = getenv("AWS_EC2_METADATA_DISABLED");
	const char *base = creds_getenv("AWS_EC2_METADATA_SERVICE_ENDPOINT");
	s3_cred_provider *p = ch->p;
	s3_credentials c;
	int64_t exp;
	s3_error err;
	size_t n;
	int r;

	if (disabled && strcasecmp(disabled, "true") == 0) {
		creds_looked(ch, "EC2 instance metadata (disabled by AWS_EC2_METADATA_DISABLED)");
		return 0;
	}
	p->url = strdup(base ? base : CREDS_IMDS_DEFAULT);
	if (!p->url) {
		creds_errf(ch->errbuf, ch->errlen, "credentials: out of memory");
		return -ENOMEM;
	}
	for (n = strlen(p->url); n && p->url[n - 1] == '/'; n--)
		p->url[n - 1] = '\0';
	creds_looked(ch, "EC2 instance metadata %s", p->url);
	p->kind = CREDS_IMDS;
	r = creds_fetch(p, &c, &exp, &p->role, &p->imds_region, &err);
	if (r) {
		/* Not on EC2, or no role attached: the usual case off EC2. */
		creds_log(p, S3_LOG_INFO, "credentials: no EC2 instance role: %s", err.message);
		p->kind = CREDS_STATIC;
		return 0;
	}
	p->source = creds_strdup_printf("EC2 instance role %s", p->role);
	if (!p->source) {
		s3_credentials_clear(&c);
		creds_errf(ch->errbuf, ch->errlen, "credentials: out of memory");
		return -ENOMEM;
	}
	creds_install(p, &c, exp);
	return 1;
}

static int creds_chain_run(struct creds_chain *ch)
{
	const char *home = creds_getenv("HOME");
	const char *region;
	struct creds_profile pr;
	char perr[256] = "";
	int r, pr_r;

	pr_r = creds_profile_load(ch->opts, home, &pr, perr, sizeof(perr));
	if (pr_r == -ENOMEM) {
		creds_errf(ch->errbuf, ch->errlen, "%s", perr);
		r = pr_r;
		goto out;
	}
	region = pr.config.region ? pr.config.region : pr.cred.region;
	if (!pr_r && region && !(ch->p->profile_region = strdup(region))) {
		creds_errf(ch->errbuf, ch->errlen, "credentials: out of memory");
		r = -ENOMEM;
		goto out;
	}

	creds_looked(ch, "passwd_file option");
	r = ch->opts->passwd_file ? creds_from_passwd(ch, ch->opts->passwd_file, true) : 0;
	if (!r)
		r = creds_from_env(ch);
	if (r > 0 && pr_r)
		creds_log(ch->p, S3_LOG_WARNING, "credentials: ignoring the AWS profile: %s", perr);
	if (!r && pr_r) {
		creds_errf(ch->errbuf, ch->errlen, "%s", perr);
		r = pr_r;
	}
	if (!r)
		r = creds_from_profile(ch, &pr);
	if (!r)
		r = creds_from_home_passwd(ch, home);
	if (!r) {
		creds_looked(ch, "%s", creds_etc_passwd);
		r = creds_from_passwd(ch, creds_etc_passwd, false);
	}
	if (!r)
		r = creds_from_ecs(ch);
	if (!r)
		r = creds_from_imds(ch);
	if (!r) {
		creds_errf(ch->errbuf, ch->errlen, "no credentials found (looked in: %s)",
		           ch->looked);
		r = -ENOENT;
	}
out:
	creds_profile_clear(&pr);
	return r < 0 ? r : 0;
}

s3_cred_provider *s3_creds_new(const s3_cred_options *opts, char *errbuf, size_t errlen)
{
	static const s3_cred_options none;
	struct creds_chain ch = {0};
	s3_cred_provider *p;

	if (!opts)
		opts = &none;
	p = calloc(1, sizeof(*p));
	if (!p) {
		creds_errf(errbuf, errlen, "credentials: out of memory");
		return NULL;
	}
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	p->log = opts->log;
	p->log_level = opts->log_level;
	ch.p = p;
	ch.opts = opts;
	ch.errbuf = errbuf;
	ch.errlen = errlen;
	if (creds_chain_run(&ch)) {
		creds_log(p, S3_LOG_DEBUG, "credentials: %s", errbuf ? errbuf : "failed");
		s3_creds_free(p);
		return NULL;
	}
	creds_log(p, S3_LOG_INFO, "credentials: using %s (access key id %s)", p->source,
	          p->cur.access_key);
	return p;
}

void s3_creds_free(s3_cred_provider *p)
{
	if (!p)
		return;
	s3_credentials_clear(&p->cur);
	free(p->source);
	free(p->url);
	creds_free_secret(p->ecs_token);
	free(p->ecs_token_file);
	free(p->role);
	free(p->profile_region);
	free(p->imds_region);
	pthread_cond_destroy(&p->cond);
	pthread_mutex_destroy(&p->lock);
	free(p);
}

/* ---------------------------------------------------------------- refresh */

static bool creds_refresh_due(const s3_cred_provider *p, int64_t now)
{
	int64_t window;

	if (!p->expires_ns)
		return false;
	window = (p->expires_ns - p->obtained_ns) / 4;
	if (window > CREDS_REFRESH_NS)
		window = CREDS_REFRESH_NS;
	return p->expires_ns - now < window;
}

/* Fetches new credentials with the lock released, so that other threads go
 * on with the current ones.  Called and returns with the lock held. */
static void creds_refresh_locked(s3_cred_provider *p)
{
	s3_credentials fresh;
	int64_t exp = 0, now;
	s3_error err;
	int r;

	p->refreshing = true;
	pthread_mutex_unlock(&p->lock);
	creds_log(p, S3_LOG_DEBUG, "credentials: refreshing %s", p->source);
	r = creds_fetch(p, &fresh, &exp, NULL, NULL, &err);
	pthread_mutex_lock(&p->lock);
	p->refreshing = false;
	now = creds_now_ns();
	/* At most one attempt per interval, even after a success: a clock or
	 * endpoint gone wrong must not turn every call into a request. */
	p->next_attempt_ns = now + creds_retry_ns;
	if (r == 0) {
		creds_install(p, &fresh, exp);
		memset(&p->last_err, 0, sizeof(p->last_err));
		creds_log(p, S3_LOG_INFO, "credentials: refreshed %s (access key id %s)", p->source,
		          p->cur.access_key);
	} else {
		p->last_err = err;
		if (p->expires_ns > now)
			creds_log(p, S3_LOG_WARNING,
			          "credentials: refreshing %s failed, still using the current "
			          "ones (they expire in %lld s): %s",
			          p->source, (long long)((p->expires_ns - now) / CREDS_NS_PER_S),
			          err.message);
		else
			creds_log(p, S3_LOG_ERR,
			          "credentials: refreshing %s failed and the current ones "
			          "expired: %s",
			          p->source, err.message);
	}
	pthread_cond_broadcast(&p->cond);
}

int s3_creds_get(s3_cred_provider *p, s3_credentials *out, s3_error *err)
{
	int r = 0;

	memset(out, 0, sizeof(*out));
	if (err)
		memset(err, 0, sizeof(*err));
	pthread_mutex_lock(&p->lock);
	for (;;) {
		int64_t now = creds_now_ns();
		bool valid = !p->expires_ns || p->expires_ns > now;

		if (!creds_refresh_due(p, now))
			break;
		if (p->refreshing) {
			if (valid)
				break;
			pthread_cond_wait(&p->cond, &p->lock);
			continue;
		}
		if (now >= p->next_attempt_ns) {
			creds_refresh_locked(p);
			continue;
		}
		if (valid)
			break;
		/* Expired, and the last attempt failed a moment ago. */
		if (err) {
			*err = p->last_err;
			creds_errf(err->message, sizeof(err->message),
			           "credentials from %s expired; refreshing failed: %s", p->source,
			           p->last_err.message);
		}
		r = creds_err_result(&p->last_err);
		break;
	}
	if (!r) {
		r = creds_copy(&p->cur, out);
		if (r)
			creds_set_error(err, ENOMEM, 0, 0, "credentials: out of memory");
	}
	pthread_mutex_unlock(&p->lock);
	return r;
}

const char *s3_creds_source(const s3_cred_provider *p)
{
	return p->source;
}

char *s3_creds_region(const s3_cred_provider *p)
{
	const char *r = p->profile_region;

	if (!r)
		r = creds_getenv("AWS_REGION");
	if (!r)
		r = creds_getenv("AWS_DEFAULT_REGION");
	if (!r)
		r = p->imds_region;
	return r ? strdup(r) : NULL;
}
