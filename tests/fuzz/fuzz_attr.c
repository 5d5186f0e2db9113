/*
 * fuzz_attr.c - libFuzzer target for fs/attr.c, the parsers of the
 * x-amz-meta-mode / -uid / -gid / -mtime values other tools wrote into the
 * bucket (anything at all, as far as bucketfs knows).
 *
 * The first input byte picks the parser (modulo 3), the rest, cut at the
 * first NUL, is the value.  Beyond the sanitizers, the contract of attr.h is
 * checked: 0 or -EINVAL, *out untouched on error, the documented ranges on
 * success, and what fs_format_time() writes parses back to the same time.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "attr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(cond)                                                                              \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond);                 \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static void fuzz_mode(const char *s)
{
	uint32_t v = 0xdeadbeef;
	int r = fs_parse_mode(s, &v);

	REQUIRE(r == 0 || r == -EINVAL);
	if (r) {
		REQUIRE(v == 0xdeadbeef);
		return;
	}
	REQUIRE(v <= 0177777);
	REQUIRE(S_ISREG(v) || S_ISDIR(v) || S_ISLNK(v));
}

static void fuzz_id(const char *s)
{
	uint32_t v = 0xdeadbeef, back = 0;
	char buf[32];
	int r = fs_parse_id(s, &v);

	REQUIRE(r == 0 || r == -EINVAL);
	if (r) {
		REQUIRE(v == 0xdeadbeef);
		return;
	}
	REQUIRE(v != UINT32_MAX);
	snprintf(buf, sizeof(buf), "%" PRIu32, v);
	REQUIRE(fs_parse_id(buf, &back) == 0 && back == v);
}

static void fuzz_time(const char *s)
{
	int64_t ns = INT64_C(0x5a5a5a5a), back = 0;
	char buf[64];
	int r = fs_parse_time(s, &ns);

	REQUIRE(r == 0 || r == -EINVAL);
	if (r) {
		REQUIRE(ns == INT64_C(0x5a5a5a5a));
		return;
	}
	fs_format_time(ns, buf, sizeof(buf));
	REQUIRE(fs_parse_time(buf, &back) == 0);
	REQUIRE(back == ns);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s;

	if (size < 1)
		return 0;
	/* A C string, as the value of a header is: cut at the first NUL. */
	s = malloc(size);
	if (!s)
		abort();
	memcpy(s, data + 1, size - 1);
	s[size - 1] = '\0';
	switch (data[0] % 3) {
	case 0:
		fuzz_mode(s);
		break;
	case 1:
		fuzz_id(s);
		break;
	case 2:
		fuzz_time(s);
		break;
	}
	free(s);
	return 0;
}
