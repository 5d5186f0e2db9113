/*
 * check.h - the assertions of the C unit tests: a failed check prints where
 * and what, counts in `failures`, and the test goes on; main() returns
 * nonzero when anything failed.
 */
#ifndef BUCKETFS_TESTS_CHECK_H
#define BUCKETFS_TESTS_CHECK_H

#include <stdio.h>
#include <string.h>

static int failures;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: %s: check failed: %s\n", __FILE__, __LINE__,       \
			        __func__, #cond);                                                  \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

#define CHECK_STR(got, want)                                                                       \
	do {                                                                                       \
		const char *got_ = (got), *want_ = (want);                                         \
		if (!got_ || strcmp(got_, want_) != 0) {                                           \
			fprintf(stderr, "%s:%d: %s: %s\n  got:  \"%s\"\n  want: \"%s\"\n",         \
			        __FILE__, __LINE__, __func__, #got, got_ ? got_ : "(null)",        \
			        want_);                                                            \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

#endif
