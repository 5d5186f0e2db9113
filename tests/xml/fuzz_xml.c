/*
 * fuzz_xml.c - libFuzzer target for s3/xml.c.
 *
 * The first input byte picks what is fuzzed (modulo 7), the rest is the
 * input:
 *   0 s3_xml_parse_list          3 s3_xml_parse_etag_result
 *   1 s3_xml_parse_error         4 s3_xml_parse_delete_result
 *   2 s3_xml_parse_mpu_initiate  5 s3_xml_parse_mpu_list (two pages)
 *   6 the builders: the input, split at NUL bytes, becomes keys (and
 *     ETags); what is built must read back identical with plain libxml2.
 * Beyond the sanitizers, each parser's documented invariants are checked on
 * success and the outputs are checked to be left empty on failure.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "xml_extract.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(cond)                                                                              \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond);                 \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static bool etag_ok(const char *etag, bool may_be_empty)
{
	size_t len = strnlen(etag, S3_ETAG_MAX);

	if (len == 0)
		return may_be_empty;
	return len < S3_ETAG_MAX && len >= 3 && etag[0] == '"' && etag[len - 1] == '"';
}

static void fuzz_list(const char *buf, size_t len)
{
	s3_list_page p;
	int r = s3_xml_parse_list(buf, len, &p);

	REQUIRE(r == 0 || r == -EPROTO || r == -ENOMEM);
	if (r) {
		REQUIRE(p.objects == NULL && p.n_objects == 0 && p.prefixes == NULL &&
		        p.n_prefixes == 0 && p.next_token == NULL);
		return;
	}
	REQUIRE(p.n_objects + p.n_prefixes <= 100000);
	for (size_t i = 0; i < p.n_objects; i++) {
		REQUIRE(p.objects[i].key && p.objects[i].key[0]);
		REQUIRE(p.objects[i].size <= INT64_MAX);
		REQUIRE(etag_ok(p.objects[i].etag, true));
		REQUIRE(p.objects[i].last_modified_ns >= 0);
	}
	for (size_t i = 0; i < p.n_prefixes; i++)
		REQUIRE(p.prefixes[i] && p.prefixes[i][0]);
	if (!p.truncated)
		REQUIRE(p.next_token == NULL);
	s3_list_page_free(&p);
}

static void fuzz_error(const char *buf, size_t len)
{
	s3_error err;
	int r;

	memset(&err, 0, sizeof(err));
	r = s3_xml_parse_error(buf, len, &err);
	REQUIRE(r == 0 || r == -EPROTO || r == -ENOMEM);
	REQUIRE(memchr(err.code, '\0', sizeof(err.code)));
	REQUIRE(memchr(err.message, '\0', sizeof(err.message)));
	REQUIRE(memchr(err.request_id, '\0', sizeof(err.request_id)));
	if (r == -EPROTO)
		REQUIRE(!err.code[0] && !err.message[0] && !err.request_id[0]);
	for (const char *c = err.message; *c; c++)
		REQUIRE((unsigned char)*c >= 0x20);
}

static void fuzz_initiate(const char *buf, size_t len)
{
	char *id = NULL;
	int r = s3_xml_parse_mpu_initiate(buf, len, &id);

	REQUIRE(r == 0 || r == -EPROTO || r == -ENOMEM);
	REQUIRE(r ? id == NULL : id != NULL && id[0]);
	free(id);
}

static void fuzz_etag(const char *buf, size_t len)
{
	char etag[S3_ETAG_MAX];
	s3_error err;
	int r;

	memset(&err, 0, sizeof(err));
	r = s3_xml_parse_etag_result(buf, len, etag, &err);
	REQUIRE(r == 0 || r == -EIO || r == -EPROTO || r == -ENOMEM);
	REQUIRE(r == 0 ? etag_ok(etag, false) : etag[0] == '\0');
}

static void fuzz_delete(const char *buf, size_t len)
{
	s3_error err;
	int r;

	memset(&err, 0, sizeof(err));
	r = s3_xml_parse_delete_result(buf, len, &err);
	REQUIRE(r == 0 || r == -EIO || r == -EPROTO || r == -ENOMEM);
	if (r == -EIO)
		REQUIRE(memchr(err.message, '\0', sizeof(err.message)));
}

static void fuzz_mpu_list(const char *buf, size_t len)
{
	s3_mpu_list l = {0};
	char *km, *um;
	bool trunc;

	/* Twice: the second call appends to what the first left. */
	for (int round = 0; round < 2; round++) {
		size_t before = l.n;
		int r = s3_xml_parse_mpu_list(buf, len, &l, &trunc, &km, &um);
		REQUIRE(r == 0 || r == -EPROTO || r == -ENOMEM);
		if (r) {
			REQUIRE(l.n == before && km == NULL && um == NULL && !trunc);
		} else {
			for (size_t i = 0; i < l.n; i++)
				REQUIRE(l.uploads[i].key && l.uploads[i].key[0] &&
				        l.uploads[i].upload_id && l.uploads[i].upload_id[0]);
		}
		free(km);
		free(um);
	}
	s3_mpu_list_free(&l);
}

/* Splits the input at NUL bytes into at most 64 strings. */
static size_t split(const char *buf, size_t len, char **out, size_t max)
{
	size_t n = 0;
	const char *p = buf, *end = buf + len;

	while (p < end && n < max) {
		const char *z = memchr(p, '\0', (size_t)(end - p));
		size_t l = z ? (size_t)(z - p) : (size_t)(end - p);
		out[n] = malloc(l + 1);
		REQUIRE(out[n]);
		memcpy(out[n], p, l);
		out[n][l] = '\0';
		n++;
		p += l + 1;
	}
	return n;
}

static void fuzz_build(const char *buf, size_t len)
{
	char *keys[64], **texts, *root, *ns;
	size_t nk = split(buf, len, keys, 64), n;
	char *doc = s3_xml_build_delete((const char *const *)keys, nk);

	if (doc) {
		REQUIRE(xml_extract(doc, "Key", &texts, &n, &root, &ns) == 0);
		REQUIRE(n == nk && strcmp(root, "Delete") == 0);
		for (size_t i = 0; i < n; i++)
			REQUIRE(strcmp(texts[i], keys[i]) == 0);
		xml_extract_free(texts, n, root, ns);
		free(doc);
	} else {
		REQUIRE(errno == EINVAL || errno == ENOMEM);
	}

	s3_part parts[64];
	for (size_t i = 0; i < nk; i++) {
		parts[i].number = (int)i + 1;
		snprintf(parts[i].etag, sizeof(parts[i].etag), "%s", keys[i]);
	}
	doc = s3_xml_build_complete(parts, nk);
	if (doc) {
		REQUIRE(xml_extract(doc, "ETag", &texts, &n, &root, &ns) == 0);
		REQUIRE(n == nk && strcmp(root, "CompleteMultipartUpload") == 0);
		for (size_t i = 0; i < n; i++)
			REQUIRE(strcmp(texts[i], parts[i].etag) == 0);
		xml_extract_free(texts, n, root, ns);
		free(doc);
	}
	for (size_t i = 0; i < nk; i++)
		free(keys[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data + 1;
	size_t len;

	if (size < 1)
		return 0;
	len = size - 1;
	switch (data[0] % 7) {
	case 0:
		fuzz_list(buf, len);
		break;
	case 1:
		fuzz_error(buf, len);
		break;
	case 2:
		fuzz_initiate(buf, len);
		break;
	case 3:
		fuzz_etag(buf, len);
		break;
	case 4:
		fuzz_delete(buf, len);
		break;
	case 5:
		fuzz_mpu_list(buf, len);
		break;
	case 6:
		fuzz_build(buf, len);
		break;
	}
	return 0;
}
