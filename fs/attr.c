/*
 * attr.c - s3fs-compatible attribute metadata: parsing the x-amz-meta-*
 * values other tools wrote (s3fs-fuse, rclone, bucketfs itself) and
 * formatting the ones bucketfs writes.
 *
 * Everything here is a pure function of its inputs, so it can be fuzzed:
 * values come from the bucket and may be anything.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#include "attr.h"
#include "s3.h"

static const char *skip_space(const char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	return s;
}

static bool only_space(const char *s)
{
	return *skip_space(s) == '\0';
}

/* A decimal number up to `max`, blanks around it allowed. */
static int parse_decimal(const char *s, unsigned long long max, unsigned long long *v)
{
	char *end;

	if (!s)
		return -EINVAL;
	s = skip_space(s);
	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	*v = strtoull(s, &end, 10);
	if (errno || !only_space(end) || *v > max)
		return -EINVAL;
	return 0;
}

int fs_parse_mode(const char *s, uint32_t *out)
{
	unsigned long long v;

	if (parse_decimal(s, 0177777, &v))
		return -EINVAL;
	/* s3fs writes the whole st_mode; an object from elsewhere may carry
	 * permission bits only: then it is a regular file. */
	if ((v & S_IFMT) == 0)
		v |= S_IFREG;
	switch (v & S_IFMT) {
	case S_IFREG:
	case S_IFDIR:
	case S_IFLNK:
		break;
	default:
		/* FIFOs, sockets and devices cannot live in a bucket. */
		return -EINVAL;
	}
	*out = (uint32_t)v;
	return 0;
}

int fs_parse_id(const char *s, uint32_t *out)
{
	unsigned long long v;

	/* (uid_t)-1 means "no change": not an owner. */
	if (parse_decimal(s, UINT32_MAX - 1, &v))
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

int fs_parse_time(const char *s, int64_t *ns_out)
{
	int64_t sec = 0, frac = 0, scale = 100000000;
	bool neg = false;
	int digits = 0;

	if (!s)
		return -EINVAL;
	s = skip_space(s);
	if (*s == '-') {
		neg = true;
		s++;
	}
	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	for (; isdigit((unsigned char)*s); s++) {
		if (++digits > 12) /* keeps sec in range; the limit is below */
			return -EINVAL;
		sec = sec * 10 + (*s - '0');
	}
	if (*s == '.') {
		for (s++; isdigit((unsigned char)*s); s++) {
			if (scale) {
				frac += (*s - '0') * scale;
				scale /= 10;
			}
		}
	}
	if (!only_space(s))
		return -EINVAL;
	/* Nanoseconds since the epoch end in 2262: later is not a time (and
	 * would overflow). */
	if (sec > (INT64_MAX - 999999999) / INT64_C(1000000000))
		return -EINVAL;
	int64_t ns = sec * INT64_C(1000000000) + frac;
	*ns_out = neg ? -ns : ns;
	return 0;
}

void fs_format_time(int64_t ns, char *buf, size_t len)
{
	/* A sign and a magnitude, as fs_parse_time reads them and rclone
	 * writes them: -0.25 s is "-0.25", not "-1.75".  The magnitude is
	 * unsigned so that INT64_MIN has one. */
	const char *sign = ns < 0 ? "-" : "";
	uint64_t mag = ns < 0 ? (uint64_t)0 - (uint64_t)ns : (uint64_t)ns;
	uint64_t sec = mag / 1000000000, frac = mag % 1000000000;

	/* Whole seconds as s3fs writes them; a fraction only when there is one,
	 * trailing zeros trimmed (rclone reads both). */
	if (!frac) {
		snprintf(buf, len, "%s%" PRIu64, sign, sec);
		return;
	}
	char f[16];
	snprintf(f, sizeof(f), "%09" PRIu64, frac);
	for (int i = 8; i > 0 && f[i] == '0'; i--)
		f[i] = '\0';
	snprintf(buf, len, "%s%" PRIu64 ".%s", sign, sec, f);
}

/* ---------------------------------------------------------------- xattrs */

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

static char *url_decode(const char *s, size_t len)
{
	char *out = malloc(len + 1), *o = out;

	if (!out)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '%' && i + 2 < len && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
			*o++ = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
			i += 2;
		} else {
			*o++ = s[i];
		}
	}
	*o = '\0';
	return out;
}

static char *base64_encode(const unsigned char *in, size_t len)
{
	char *out = malloc(4 * ((len + 2) / 3) + 1);

	if (out)
		EVP_EncodeBlock((unsigned char *)out, in, (int)len);
	return out;
}

/* Lenient as s3fs is: the text ends at the first '=' or the end, padding
 * may be missing; -EINVAL on any character outside the alphabet. */
static int base64_decode(const char *in, size_t len, unsigned char **out, size_t *out_len)
{
	const char *eq = memchr(in, '=', len);
	size_t n = eq ? (size_t)(eq - in) : len, full;
	unsigned char *buf;
	char *padded;
	int got;

	/* EVP_DecodeBlock skips blanks at the ends; this format has none. */
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)in[i]) && in[i] != '+' && in[i] != '/')
			return -EINVAL;
	if (n % 4 == 1)
		n--; /* six bits, not a byte */
	full = (n + 3) / 4 * 4;
	padded = malloc(full + 1);
	buf = malloc(full / 4 * 3 + 1);
	if (!padded || !buf) {
		free(padded);
		free(buf);
		return -ENOMEM;
	}
	memcpy(padded, in, n);
	memset(padded + n, '=', full - n);
	got = EVP_DecodeBlock(buf, (const unsigned char *)padded, (int)full);
	free(padded);
	if (got < 0) {
		free(buf);
		return -EINVAL;
	}
	*out = buf;
	*out_len = (size_t)got - (full - n); /* DecodeBlock counts the padding */
	return 0;
}

struct fs_xattr *fs_xattrs_find(const struct fs_xattrs *x, const char *name)
{
	for (size_t i = 0; i < x->n; i++)
		if (strcmp(x->v[i].name, name) == 0)
			return &x->v[i];
	return NULL;
}

int fs_xattrs_set(struct fs_xattrs *x, const char *name, const void *value, size_t len)
{
	struct fs_xattr *a = fs_xattrs_find(x, name);
	unsigned char *copy = malloc(len ? len : 1);

	if (!copy)
		return -ENOMEM;
	if (len)
		memcpy(copy, value, len);
	if (!a) {
		struct fs_xattr *v = realloc(x->v, (x->n + 1) * sizeof(*v));
		char *n = strdup(name);
		if (!v || !n) {
			if (v)
				x->v = v;
			free(n);
			free(copy);
			return -ENOMEM;
		}
		x->v = v;
		a = &x->v[x->n++];
		a->name = n;
		a->value = NULL;
	}
	free(a->value);
	a->value = copy;
	a->len = len;
	return 0;
}

int fs_xattrs_remove(struct fs_xattrs *x, const char *name)
{
	struct fs_xattr *a = fs_xattrs_find(x, name);

	if (!a)
		return -ENODATA;
	free(a->name);
	free(a->value);
	*a = x->v[--x->n];
	return 0;
}

void fs_xattrs_clear(struct fs_xattrs *x)
{
	for (size_t i = 0; i < x->n; i++) {
		free(x->v[i].name);
		free(x->v[i].value);
	}
	free(x->v);
	x->v = NULL;
	x->n = 0;
}

static char *trim_quotes(char *s)
{
	while (*s == ' ' || *s == '"')
		s++;
	size_t n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '"'))
		s[--n] = '\0';
	return s;
}

int fs_xattrs_parse(const char *enc, size_t len, struct fs_xattrs *out)
{
	char *text = url_decode(enc, len), *s, *save = NULL, *pair;
	int r = 0;

	memset(out, 0, sizeof(*out));
	if (!text)
		return -ENOMEM;
	s = text;
	while (*s == ' ' || *s == '{')
		s++;
	char *end = s + strlen(s);
	while (end > s && (end[-1] == ' ' || end[-1] == '}'))
		*--end = '\0';
	for (pair = strtok_r(s, ",", &save); pair && !r; pair = strtok_r(NULL, ",", &save)) {
		char *colon = strchr(pair, ':');
		unsigned char *val = NULL;
		size_t vlen = 0;
		if (!colon)
			continue;
		*colon = '\0';
		char *name = trim_quotes(pair), *v = trim_quotes(colon + 1);
		if (!*name || base64_decode(v, strlen(v), &val, &vlen))
			continue;
		r = fs_xattrs_set(out, name, val, vlen);
		free(val);
	}
	free(text);
	if (r)
		fs_xattrs_clear(out);
	return r;
}

int fs_xattrs_format(const struct fs_xattrs *x, char **out)
{
	size_t cap = 3, used = 0;
	char *json, *enc;

	*out = NULL;
	if (!x->n)
		return 0;
	for (size_t i = 0; i < x->n; i++)
		cap += strlen(x->v[i].name) + 4 * ((x->v[i].len + 2) / 3) + 6;
	json = malloc(cap);
	if (!json)
		return -ENOMEM;
	json[used++] = '{';
	for (size_t i = 0; i < x->n; i++) {
		char *b = base64_encode(x->v[i].value, x->v[i].len);
		if (!b) {
			free(json);
			return -ENOMEM;
		}
		used += (size_t)snprintf(json + used, cap - used, "%s\"%s\":\"%s\"", i ? "," : "",
		                         x->v[i].name, b);
		free(b);
	}
	snprintf(json + used, cap - used, "}");
	enc = s3_uri_encode(json, true); /* s3fs's urlEncode: "/" stays */
	free(json);
	if (!enc)
		return -ENOMEM;
	*out = enc;
	return 0;
}
