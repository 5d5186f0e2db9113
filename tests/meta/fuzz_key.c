/*
 * fuzz_key.c - libFuzzer target for meta_key_to_path(): any bytes in, and a
 * path out only if it is clean and maps back to the same key.  The first
 * input byte picks the bucket prefix; the rest is the key.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "meta.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const prefixes[] = {"", "p/", "a/b/"};
	const char *prefix;
	size_t plen, klen, out_size;
	char *key, *out, *back;
	bool marker;
	int n;

	if (size == 0)
		return 0;
	prefix = prefixes[data[0] % 3];
	plen = strlen(prefix);
	klen = size - 1;
	/* Half of the inputs get the prefix, so the rest of the key is
	 * exercised rather than refused at once. */
	key = malloc(plen + klen + 1);
	out_size = plen + klen + 2;
	out = malloc(out_size);
	if (!key || !out)
		abort();
	if (data[0] & 0x80) {
		memcpy(key, prefix, plen);
		memcpy(key + plen, data + 1, klen);
		klen += plen;
	} else {
		memcpy(key, data + 1, klen);
	}
	/* An exact-size buffer: any overrun is ASan's to catch. */
	n = meta_key_to_path(prefix, key, klen, out, klen + 2, &marker);
	if (n >= 0) {
		if (out[0] != '/' || (size_t)n != strlen(out) || strstr(out, "//") ||
		    strstr(out, "/./") || strstr(out, "/../") || (n > 1 && out[n - 1] == '/'))
			abort();
		back = meta_path_to_key(prefix, out, marker);
		if (!back || strlen(back) != klen || memcmp(back, key, klen) != 0)
			abort();
		free(back);
	} else if (n != -EINVAL && n != -ERANGE) {
		abort();
	}
	free(key);
	free(out);
	return 0;
}
