/*
 * fuzz_creds.c - libFuzzer target for the parsers of s3/creds.c: the s3fs
 * passwd file, the AWS shared credentials and config files, and the JSON
 * reader of the ECS / IMDS answers.
 *
 * creds.c is included rather than linked, as tests/creds/test_creds.c does,
 * to reach its static parsers.  The first input byte picks what is fuzzed
 * (modulo 5) and a variant (bit 7), the rest is the file or body:
 *   0 creds_parse_passwd (bucket "mybucket", or none)
 *   1 creds_ini_parse, credentials file (profile "default", or "dev")
 *   2 creds_ini_parse, config file (profile "default", or "dev")
 *   3 creds_json_fields (the five fields creds_from_json asks for)
 *   4 creds_from_json (an IMDS answer, or an ECS one)
 * Files get what creds_read_file() gives the parsers: a NUL-terminated copy
 * without inner NULs.  Beyond the sanitizers: the documented results, the
 * outputs, and that an error message never quotes the input (a line of a
 * credentials file may hold a secret): it must be one of the parser's
 * message templates, digits aside.
 */
#include "creds.c"

#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(cond)                                                                              \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond);                 \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

#define FUZZ_PATH "/fuzz/file"

/* Whether msg is one of the templates, with every run of digits in msg
 * matching one '#' in the template. */
static bool message_is_template(const char *msg, const char *const *templates)
{
	for (; *templates; templates++) {
		const char *m = msg, *t = *templates;
		while (*m && *t) {
			if (*t == '#' && isdigit((unsigned char)*m)) {
				while (isdigit((unsigned char)*m))
					m++;
				t++;
			} else if (*t == *m) {
				t++;
				m++;
			} else {
				break;
			}
		}
		if (!*m && !*t)
			return true;
	}
	return false;
}

static bool clean_value(const char *s)
{
	size_t n = strlen(s);

	return n > 0 && !isspace((unsigned char)s[0]) && !isspace((unsigned char)s[n - 1]);
}

static void fuzz_passwd(char *buf, size_t len, bool with_bucket)
{
	static const char *const templates[] = {
	        "passwd file " FUZZ_PATH " has more than one ACCESSKEY:SECRET line without a "
	        "bucket (line #)",
	        "passwd file " FUZZ_PATH " line #: expected ACCESSKEY:SECRET or "
	        "BUCKET:ACCESSKEY:SECRET",
	        NULL,
	};
	char *orig = strdup(buf), errbuf[512] = "";
	s3_credentials c;
	int r;

	REQUIRE(orig);
	memset(&c, 0x5a, sizeof(c));
	r = creds_parse_passwd(buf, len, FUZZ_PATH, with_bucket ? "mybucket" : NULL, &c, errbuf,
	                       sizeof(errbuf));
	REQUIRE(r == 1 || r == 0 || r == -EINVAL || r == -ENOMEM);
	if (r == 1) {
		REQUIRE(c.access_key[0] && c.secret_key[0] && !c.session_token);
		REQUIRE(!strpbrk(c.access_key, ": \t\r\n\v\f"));
		REQUIRE(!strpbrk(c.secret_key, ": \t\r\n\v\f"));
		REQUIRE(strstr(orig, c.access_key) && strstr(orig, c.secret_key));
		s3_credentials_clear(&c);
	}
	if (r == -EINVAL)
		REQUIRE(message_is_template(errbuf, templates));
	else
		REQUIRE(errbuf[0] == '\0');
	free(orig);
}

static void fuzz_ini(char *buf, size_t len, bool config, bool dev)
{
	static const char *const templates[] = {
	        FUZZ_PATH " line #: expected [SECTION] or NAME = VALUE",
	        "reading " FUZZ_PATH ": out of memory",
	        NULL,
	};
	struct creds_ini_vals v;
	char errbuf[512] = "";
	int r;

	memset(&v, 0, sizeof(v));
	r = creds_ini_parse(buf, len, FUZZ_PATH, dev ? "dev" : "default", config, &v, errbuf,
	                    sizeof(errbuf));
	REQUIRE(r == 0 || r == -EINVAL || r == -ENOMEM);
	if (r)
		REQUIRE(message_is_template(errbuf, templates));
	else
		REQUIRE(errbuf[0] == '\0');
	if (v.ak || v.sk || v.token || v.region)
		REQUIRE(v.found);
	REQUIRE(!v.ak || clean_value(v.ak));
	REQUIRE(!v.sk || clean_value(v.sk));
	REQUIRE(!v.token || clean_value(v.token));
	REQUIRE(!v.region || clean_value(v.region));
	creds_ini_vals_clear(&v);
}

static void fuzz_json(const char *buf, size_t len)
{
	struct creds_json_field f[] = {
	        {"AccessKeyId", NULL}, {"SecretAccessKey", NULL},
	        {"Token", NULL},       {"Expiration", NULL},
	        {"Code", NULL},
	};
	const size_t nf = sizeof(f) / sizeof(f[0]);
	int r = creds_json_fields(buf, len, f, nf);

	REQUIRE(r == 0 || r == -EPROTO || r == -ENOMEM);
	for (size_t k = 0; k < nf; k++) {
		if (r) {
			REQUIRE(f[k].value == NULL);
			continue;
		}
		/* Decoding never grows a string. */
		REQUIRE(!f[k].value || strlen(f[k].value) <= len);
		creds_free_secret(f[k].value);
	}
}

static void fuzz_from_json(const char *buf, size_t len, bool imds)
{
	struct creds_json_field f[] = {
	        {"SecretAccessKey", NULL}, {"Token", NULL}, {"Expiration", NULL}, {"Code", NULL}};
	/* (f[2] is Expiration, f[3] Code) */
	s3_credentials c;
	int64_t expires = 0;
	s3_error err;
	int r;

	memset(&err, 0, sizeof(err));
	r = creds_from_json(buf, len, imds, "fuzz", &c, &expires, &err);
	REQUIRE(r == 0 || r == -EPROTO || r == -ENOMEM);
	if (r == 0) {
		REQUIRE(c.access_key[0] && c.secret_key[0] && c.session_token[0]);
		REQUIRE(expires > 0 && c.expiration == (time_t)(expires / CREDS_NS_PER_S));
		s3_credentials_clear(&c);
		return;
	}
	REQUIRE(memchr(err.message, '\0', sizeof(err.message)));
	/* The message goes to the log: no line breaks or terminal escapes
	 * smuggled in by the endpoint, and nothing quoted from the body but
	 * Code and Expiration (not secret), cut short: it must be one of the
	 * messages below. */
	for (const char *m = err.message; *m; m++)
		REQUIRE((unsigned char)*m >= 0x20 && *m != 0x7f);
	if (creds_json_fields(buf, len, f, 4) != 0) {
		REQUIRE(strcmp(err.message, "fuzz: malformed JSON response") == 0);
		return;
	}
	char code[41], exp[41], want[6][256];
	creds_printable(f[3].value ? f[3].value : "", code, sizeof(code));
	creds_printable(f[2].value ? f[2].value : "", exp, sizeof(exp));
	snprintf(want[0], sizeof(want[0]), "fuzz: Code is %s, not Success",
	         f[3].value ? code : "missing");
	snprintf(want[1], sizeof(want[1]), "fuzz: bad Expiration \"%s\"", exp);
	snprintf(want[2], sizeof(want[2]),
	         "fuzz: the credentials expired already (Expiration %s; is the clock right?)", exp);
	snprintf(want[3], sizeof(want[3]), "fuzz: the response has no AccessKeyId");
	snprintf(want[4], sizeof(want[4]), "fuzz: the response has no SecretAccessKey");
	snprintf(want[5], sizeof(want[5]), "fuzz: the response has no Token");
	bool known = strcmp(err.message, "fuzz: the response has no Expiration") == 0 ||
	             strcmp(err.message, "fuzz: malformed JSON response") == 0;
	for (size_t k = 0; k < 6; k++)
		known |= strcmp(err.message, want[k]) == 0;
	if (!known)
		fprintf(stderr, "unexpected message: %s\n", err.message);
	REQUIRE(known);
	for (size_t k = 0; k < 4; k++)
		creds_free_secret(f[k].value);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	bool variant;
	size_t len;
	char *buf;

	if (size < 1)
		return 0;
	variant = data[0] & 0x80;
	len = size - 1;
	buf = malloc(len + 1);
	if (!buf)
		abort();
	memcpy(buf, data + 1, len);
	buf[len] = '\0';
	switch (data[0] % 5) {
	case 0:
	case 1:
	case 2:
		/* creds_read_file() refuses a file with a NUL in it. */
		if (memchr(buf, '\0', len))
			break;
		if (data[0] % 5 == 0)
			fuzz_passwd(buf, len, variant);
		else
			fuzz_ini(buf, len, data[0] % 5 == 2, variant);
		break;
	case 3:
		/* Bodies are not NUL-terminated: the exact bytes. */
		fuzz_json((const char *)data + 1, len);
		break;
	case 4:
		fuzz_from_json((const char *)data + 1, len, variant);
		break;
	}
	free(buf);
	return 0;
}
