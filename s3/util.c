/*
 * util.c - small pieces shared by the files of s3/: the one mapping from
 * s3_error to errno, error formatting, user metadata, time parsing, URI
 * encoding and SHA-256 hex digests.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "internal.h"

/* ---------------------------------------------------------------- errors */

static int errno_from_code(const char *code)
{
	static const struct {
		const char *code;
		int err;
	} map[] = {
	        {"NoSuchKey", ENOENT},
	        {"NoSuchBucket", ENOENT},
	        {"NoSuchUpload", ENOENT},
	        {"NotFound", ENOENT},
	        {"AccessDenied", EACCES},
	        {"AllAccessDisabled", EACCES},
	        {"AccountProblem", EACCES},
	        {"InvalidAccessKeyId", EPERM},
	        {"SignatureDoesNotMatch", EPERM},
	        {"ExpiredToken", EPERM},
	        {"InvalidToken", EPERM},
	        {"TokenRefreshRequired", EPERM},
	        {"InvalidRange", EINVAL},
	        {"InvalidArgument", EINVAL},
	        {"InvalidRequest", EINVAL},
	        {"KeyTooLongError", ENAMETOOLONG},
	        {"PreconditionFailed", ESTALE},
	        {"EntityTooLarge", EFBIG},
	        {"EntityTooSmall", EINVAL},
	        {"InvalidPart", EIO},
	        {"InvalidPartOrder", EIO},
	        {"BucketAlreadyOwnedByYou", EEXIST},
	        {"BucketAlreadyExists", EEXIST},
	        {"RequestTimeout", ETIMEDOUT},
	        {"SlowDown", EAGAIN},
	        {"ServiceUnavailable", EAGAIN},
	        {"QuotaExceeded", EDQUOT},
	        {"NotImplemented", ENOTSUP},
	        {"MethodNotAllowed", ENOTSUP},
	};
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (strcmp(code, map[i].code) == 0)
			return map[i].err;
	return 0;
}

static int errno_from_curl(int cc)
{
	switch ((CURLcode)cc) {
	case CURLE_OK:
		return 0;
	case CURLE_OPERATION_TIMEDOUT:
		return ETIMEDOUT;
	case CURLE_COULDNT_CONNECT:
		return ECONNREFUSED;
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
		return EHOSTUNREACH;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CACERT_BADFILE:
		return EPROTO;
	case CURLE_OUT_OF_MEMORY:
		return ENOMEM;
	case CURLE_ABORTED_BY_CALLBACK:
		return ECANCELED;
	default:
		return EIO;
	}
}

int s3_error_errno(const s3_error *err)
{
	int e;

	if (!err)
		return EIO;
	if (err->sys_errno)
		return err->sys_errno;
	if (err->code[0] && (e = errno_from_code(err->code)) != 0)
		return e;
	switch (err->http_status) {
	case 0:
		break;
	case 400:
		return EINVAL;
	case 401:
		return EPERM;
	case 403:
		return EACCES;
	case 404:
		return ENOENT;
	case 409:
		return EEXIST;
	case 411:
	case 416:
		return EINVAL;
	case 412:
		return ESTALE;
	case 413:
		return EFBIG;
	case 501:
		return ENOTSUP;
	case 503:
		return EAGAIN;
	default:
		if (err->http_status >= 200 && err->http_status < 300 && !err->code[0])
			return 0;
		return EIO;
	}
	if (err->curl_code)
		return errno_from_curl(err->curl_code);
	if (err->code[0])
		return EIO;
	return 0;
}

void s3_error_format(const s3_error *err, char *buf, size_t len)
{
	size_t n = 0;

	if (!len)
		return;
	buf[0] = '\0';
	if (!err)
		return;
#define APPEND(...)                                                                                \
	do {                                                                                       \
		if (n < len)                                                                       \
			n += (size_t)snprintf(buf + n, len - n, __VA_ARGS__);                      \
	} while (0)
	if (err->http_status)
		APPEND("HTTP %d", err->http_status);
	if (err->code[0])
		APPEND("%s%s", n ? " " : "", err->code);
	if (err->message[0])
		APPEND("%s%s", n ? ": " : "", err->message);
	else if (err->curl_code)
		APPEND("%s%s", n ? ": " : "", curl_easy_strerror((CURLcode)err->curl_code));
	else if (err->sys_errno)
		APPEND("%s%s", n ? ": " : "", strerror(err->sys_errno));
	if (err->request_id[0])
		APPEND(" (request id %s)", err->request_id);
	if (!n)
		APPEND("no error");
#undef APPEND
}

/* ---------------------------------------------------------------- metadata */

int s3_meta_set(s3_meta *m, const char *name, const char *value)
{
	char *n, *v;

	for (size_t i = 0; i < m->n; i++) {
		if (strcasecmp(m->items[i].name, name) == 0) {
			v = strdup(value);
			if (!v)
				return -ENOMEM;
			free(m->items[i].value);
			m->items[i].value = v;
			return 0;
		}
	}
	s3_meta_item *items = realloc(m->items, (m->n + 1) * sizeof(*items));
	if (!items)
		return -ENOMEM;
	m->items = items;
	n = strdup(name);
	v = strdup(value);
	if (!n || !v) {
		free(n);
		free(v);
		return -ENOMEM;
	}
	for (char *p = n; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	m->items[m->n].name = n;
	m->items[m->n].value = v;
	m->n++;
	return 0;
}

const char *s3_meta_get(const s3_meta *m, const char *name)
{
	if (!m)
		return NULL;
	for (size_t i = 0; i < m->n; i++)
		if (strcasecmp(m->items[i].name, name) == 0)
			return m->items[i].value;
	return NULL;
}

int s3_meta_copy(s3_meta *dst, const s3_meta *src)
{
	int r;

	if (!src)
		return 0;
	for (size_t i = 0; i < src->n; i++) {
		r = s3_meta_set(dst, src->items[i].name, src->items[i].value);
		if (r)
			return r;
	}
	return 0;
}

void s3_meta_clear(s3_meta *m)
{
	for (size_t i = 0; i < m->n; i++) {
		free(m->items[i].name);
		free(m->items[i].value);
	}
	free(m->items);
	m->items = NULL;
	m->n = 0;
}

void s3_head_clear(s3_head *h)
{
	free(h->content_type);
	s3_meta_clear(&h->meta);
	memset(h, 0, sizeof(*h));
}

/* ---------------------------------------------------------------- time */

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	/* Howard Hinnant's algorithm: days since 1970-01-01 of a proleptic
	 * Gregorian date, without timegm()'s dependence on TZ. */
	y -= m <= 2;
	const int64_t era = (y >= 0 ? y : y - 399) / 400;
	const unsigned yoe = (unsigned)(y - era * 400);
	const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

/* Exactly n digits at s, as a number; -1 if they are not all digits. */
static int fixed_digits(const char *s, int n)
{
	int v = 0;

	for (int i = 0; i < n; i++) {
		if (!isdigit((unsigned char)s[i]))
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v;
}

static bool is_leap(int y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Times S3 can hand out: from the epoch up to where int64 nanoseconds end
 * (2262-04-11); anything else is malformed input, not a time. */
#define MAX_YEAR 2261

int64_t s3_parse_iso8601(const char *s)
{
	static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	int y, mo, d, h, mi, sec;
	int64_t frac_ns = 0;

	/* YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00) */
	if (!s || strlen(s) < 19 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' ||
	    s[16] != ':')
		return -1;
	y = fixed_digits(s, 4);
	mo = fixed_digits(s + 5, 2);
	d = fixed_digits(s + 8, 2);
	h = fixed_digits(s + 11, 2);
	mi = fixed_digits(s + 14, 2);
	sec = fixed_digits(s + 17, 2);
	if (y < 1970 || y > MAX_YEAR || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 || mi < 0 ||
	    mi > 59 || sec < 0 || sec > 60)
		return -1;
	if (d > mdays[mo - 1] + (mo == 2 && is_leap(y)))
		return -1;
	s += 19;
	if (*s == '.') {
		int64_t scale = 100000000;
		if (!isdigit((unsigned char)s[1]))
			return -1;
		for (s++; isdigit((unsigned char)*s); s++) {
			frac_ns += (*s - '0') * scale;
			scale /= 10;
		}
	}
	if (strcmp(s, "Z") != 0 && *s != '\0' && strcmp(s, "+00:00") != 0)
		return -1;
	int64_t days = days_from_civil(y, (unsigned)mo, (unsigned)d);
	return ((days * 86400) + h * 3600 + mi * 60 + sec) * INT64_C(1000000000) + frac_ns;
}

int64_t s3_parse_http_date(const char *s)
{
	time_t t;

	if (!s)
		return -1;
	t = curl_getdate(s, NULL);
	/* Refuse what does not fit int64 nanoseconds (and pre-epoch times). */
	if (t == (time_t)-1 || t < 0 || t > INT64_MAX / INT64_C(1000000000))
		return -1;
	return (int64_t)t * INT64_C(1000000000);
}

/* ---------------------------------------------------------------- encoding */

static bool is_unreserved(unsigned char c)
{
	return isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~';
}

char *s3_uri_encode(const char *s, bool keep_slash)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t len = strlen(s);
	char *out = malloc(len * 3 + 1), *o = out;

	if (!out)
		return NULL;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (is_unreserved(*p) || (keep_slash && *p == '/')) {
			*o++ = (char)*p;
		} else {
			*o++ = '%';
			*o++ = hex[*p >> 4];
			*o++ = hex[*p & 15];
		}
	}
	*o = '\0';
	return out;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

char *s3_uri_decode(const char *s)
{
	char *out = malloc(strlen(s) + 1), *o = out;

	if (!out)
		return NULL;
	for (const char *p = s; *p; p++) {
		if (*p == '%') {
			int hi = hexval((unsigned char)p[1]),
			    lo = hi < 0 ? -1 : hexval((unsigned char)p[2]);
			if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
				free(out);
				return NULL;
			}
			*o++ = (char)(hi << 4 | lo);
			p += 2;
		} else {
			*o++ = *p;
		}
	}
	*o = '\0';
	return out;
}

void s3_sha256_hex(const void *data, size_t len, char out[65])
{
	unsigned char md[32];
	unsigned int mdlen = 0;
	static const char hex[] = "0123456789abcdef";

	EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
	for (unsigned i = 0; i < 32; i++) {
		out[2 * i] = hex[md[i] >> 4];
		out[2 * i + 1] = hex[md[i] & 15];
	}
	out[64] = '\0';
}
