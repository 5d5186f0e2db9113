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

#include "attr.h"

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

int fs_parse_mode(const char *s, uint32_t *out)
{
	unsigned long long v;
	char *end;

	if (!s)
		return -EINVAL;
	s = skip_space(s);
	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || !only_space(end) || v > 0177777)
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
	char *end;

	if (!s)
		return -EINVAL;
	s = skip_space(s);
	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || !only_space(end) || v >= UINT32_MAX) /* (uid_t)-1 means "no change" */
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
		if (++digits > 12) /* beyond year 30000: not a time */
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
	int64_t ns = sec * INT64_C(1000000000) + frac;
	*ns_out = neg ? -ns : ns;
	return 0;
}

void fs_format_time(int64_t ns, char *buf, size_t len)
{
	int64_t sec = ns / 1000000000, frac = ns % 1000000000;

	if (frac < 0) {
		frac += 1000000000;
		sec -= 1;
	}
	/* Whole seconds as s3fs writes them; a fraction only when there is one,
	 * trailing zeros trimmed (rclone reads both). */
	if (!frac) {
		snprintf(buf, len, "%" PRId64, sec);
		return;
	}
	char f[16];
	snprintf(f, sizeof(f), "%09" PRId64, frac);
	for (int i = 8; i > 0 && f[i] == '0'; i--)
		f[i] = '\0';
	snprintf(buf, len, "%" PRId64 ".%s", sec, f);
}
