/*
 * test_sigv4_oom.c - every allocation s3_sigv4_sign() makes is made to fail
 * in turn; each failure must come back as -ENOMEM with nothing left to free
 * and nothing leaked.
 *
 * Linked with -Wl,--wrap for malloc, calloc, realloc, strdup and free, so
 * that the allocations of sigv4.c and util.c (not OpenSSL's) go through the
 * counters below.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

void *__real_malloc(size_t size);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t size);
char *__real_strdup(const char *s);
void __real_free(void *p);

void *__wrap_malloc(size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t size);
char *__wrap_strdup(const char *s);
void __wrap_free(void *p);

static long fail_at = -1; /* index of the allocation to fail, -1: none */
static long n_allocs;     /* allocations attempted since the last reset */
static long live;         /* blocks allocated and not yet freed */

static bool oom_should_fail(void)
{
	return n_allocs++ == fail_at;
}

void *__wrap_malloc(size_t size)
{
	void *p = oom_should_fail() ? NULL : __real_malloc(size);

	live += p != NULL;
	return p;
}

void *__wrap_calloc(size_t n, size_t size)
{
	void *p = oom_should_fail() ? NULL : __real_calloc(n, size);

	live += p != NULL;
	return p;
}

void *__wrap_realloc(void *old, size_t size)
{
	void *p = oom_should_fail() ? NULL : __real_realloc(old, size);

	live += p != NULL && old == NULL;
	return p;
}

char *__wrap_strdup(const char *s)
{
	char *p = oom_should_fail() ? NULL : __real_strdup(s);

	live += p != NULL;
	return p;
}

void __wrap_free(void *p)
{
	live -= p != NULL;
	__real_free(p);
}

int main(void)
{
	const s3_kv query[] = {{"prefix", "a b/"}, {"delimiter", "/"}, {"uploads", NULL}};
	const s3_kv headers[] = {
	        {"Content-Type", " text/plain "},
	        {"x-amz-meta-mode", "33188"},
	        {"X-Amz-Meta-Mode", "again"},
	};
	const s3_sigv4_input in = {
	        .method = "PUT",
	        .host = "bucket.s3.amazonaws.com",
	        .path = "/dir/a key+\xc3\xa9",
	        .query = query,
	        .n_query = 3,
	        .headers = headers,
	        .n_headers = 3,
	        .payload_hash = "UNSIGNED-PAYLOAD",
	        .amz_date = "20240101T120000Z",
	        .region = "eu-west-1",
	        .service = "s3",
	        .access_key = "AKIDEXAMPLE",
	        .secret_key = "secret",
	        .session_token = "token",
	};
	s3_sigv4_output out, ref;
	int failures = 0;
	long i;

	if (s3_sigv4_sign(&in, &ref) != 0) {
		fprintf(stderr, "test_sigv4_oom: signing without failures failed\n");
		return 1;
	}
	for (i = 0;; i++) {
		int ret;

		fail_at = i;
		n_allocs = 0;
		live = 0;
		ret = s3_sigv4_sign(&in, &out);
		if (ret == 0) {
			/* Past the last allocation: the result must be the real one. */
			if (strcmp(out.authorization, ref.authorization) != 0) {
				fprintf(stderr, "allocation %ld: wrong signature\n", i);
				failures++;
			}
			s3_sigv4_output_clear(&out);
		} else {
			if (ret != -ENOMEM) {
				fprintf(stderr, "allocation %ld failed: got %d, want -ENOMEM\n", i,
				        ret);
				failures++;
			}
			if (out.canonical_request || out.string_to_sign || out.signed_headers ||
			    out.authorization || out.url_path || out.url_query) {
				fprintf(stderr, "allocation %ld failed: output not cleared\n", i);
				failures++;
			}
		}
		if (live != 0) {
			fprintf(stderr, "allocation %ld failed: %ld block(s) leaked\n", i, live);
			failures++;
		}
		if (ret == 0)
			break;
	}
	fail_at = -1;
	s3_sigv4_output_clear(&ref);
	if (i < 10) {
		fprintf(stderr, "test_sigv4_oom: only %ld allocations seen\n", i);
		failures++;
	}
	if (failures)
		return 1;
	printf("test_sigv4_oom: each of %ld allocations failed in turn, no leaks\n", i);
	return 0;
}
