/*
 * sigv4_tool.c - runs s3_sigv4_sign() on requests read from stdin, one per
 * line, so that a script can compare it with another signer (botocore).
 *
 * Input: one request per line, fields separated by TAB, every field
 * hex-encoded so that any byte (space, TAB, UTF-8, '%') survives:
 *
 *   method host path payload_hash amz_date region service access_key
 *   secret_key session_token NQ {name value}*NQ NH {name value}*NH
 *
 * NQ and NH are plain decimal counts.  A value written as "-" is NULL (so
 * "-" and "" distinguish a NULL query value from an empty one).
 *
 * Output: one line per request,
 *   OK TAB signature TAB authorization TAB canonical_request TAB
 *      string_to_sign TAB url_path TAB url_query      (all but the signature hex)
 * or
 *   ERR TAB errno-value
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define TOOL_FIXED_FIELDS 10

static int tool_hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes a hex field in place ("-" becomes NULL); false on bad input. */
static bool tool_unhex(char *field, char **out)
{
	size_t len = strlen(field);
	char *o = field;

	if (strcmp(field, "-") == 0) {
		*out = NULL;
		return true;
	}
	if (len % 2)
		return false;
	for (size_t i = 0; i < len; i += 2) {
		int hi = tool_hexval((unsigned char)field[i]);
		int lo = tool_hexval((unsigned char)field[i + 1]);

		if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
			return false;
		*o++ = (char)(hi << 4 | lo);
	}
	*o = '\0';
	*out = field;
	return true;
}

static void tool_print_hex(const char *s)
{
	putchar('\t');
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		printf("%02x", *p);
}

/* Splits line on TAB into fields[] (empty fields kept). */
static size_t tool_split(char *line, char ***fields)
{
	size_t n = 1, i = 0;
	char **f;

	for (char *p = line; *p; p++)
		n += *p == '\t';
	f = calloc(n, sizeof(*f));
	if (!f)
		return 0;
	for (char *tok; (tok = strsep(&line, "\t")) != NULL;)
		f[i++] = tok;
	*fields = f;
	return n;
}

/* Reads `count` name/value pairs starting at fields[*pos]. */
static bool tool_pairs(char **fields, size_t nfields, size_t *pos, s3_kv **out, size_t *n)
{
	char *end;
	unsigned long count;
	s3_kv *kv;

	if (*pos >= nfields)
		return false;
	count = strtoul(fields[*pos], &end, 10);
	if (*end || end == fields[*pos] || count > (nfields - *pos - 1) / 2)
		return false;
	(*pos)++;
	kv = calloc(count ? count : 1, sizeof(*kv));
	if (!kv)
		return false;
	for (unsigned long i = 0; i < count; i++) {
		char *name, *value;

		if (!tool_unhex(fields[*pos], &name) || !tool_unhex(fields[*pos + 1], &value)) {
			free(kv);
			return false;
		}
		kv[i].name = name;
		kv[i].value = value;
		*pos += 2;
	}
	*out = kv;
	*n = count;
	return true;
}

static int tool_line(char *line)
{
	char **f = NULL, *v[TOOL_FIXED_FIELDS];
	s3_kv *query = NULL, *headers = NULL;
	size_t nf = tool_split(line, &f), pos = TOOL_FIXED_FIELDS;
	s3_sigv4_input in = {0};
	s3_sigv4_output out;
	int ret = -1;

	if (nf < TOOL_FIXED_FIELDS)
		goto out;
	for (int i = 0; i < TOOL_FIXED_FIELDS; i++)
		if (!tool_unhex(f[i], &v[i]))
			goto out;
	if (!tool_pairs(f, nf, &pos, &query, &in.n_query) ||
	    !tool_pairs(f, nf, &pos, &headers, &in.n_headers) || pos != nf)
		goto out;
	in.method = v[0];
	in.host = v[1];
	in.path = v[2];
	in.payload_hash = v[3];
	in.amz_date = v[4];
	in.region = v[5];
	in.service = v[6];
	in.access_key = v[7];
	in.secret_key = v[8];
	in.session_token = v[9];
	in.query = query;
	in.headers = headers;

	ret = s3_sigv4_sign(&in, &out);
	if (ret) {
		printf("ERR\t%d\n", -ret);
	} else {
		printf("OK\t%s", out.signature);
		tool_print_hex(out.authorization);
		tool_print_hex(out.canonical_request);
		tool_print_hex(out.string_to_sign);
		tool_print_hex(out.url_path);
		tool_print_hex(out.url_query);
		putchar('\n');
		s3_sigv4_output_clear(&out);
	}
	ret = 0;
out:
	free(query);
	free(headers);
	free(f);
	return ret;
}

int main(void)
{
	char *line = NULL;
	size_t cap = 0, lineno = 0;
	ssize_t len;
	int status = 0;

	while ((len = getline(&line, &cap, stdin)) >= 0) {
		lineno++;
		if (len && line[len - 1] == '\n')
			line[--len] = '\0';
		if (tool_line(line)) {
			fprintf(stderr, "sigv4_tool: line %zu: malformed request\n", lineno);
			status = 2;
			break;
		}
	}
	free(line);
	return status;
}
