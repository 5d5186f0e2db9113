/*
 * test_creds.c - the credential chain: every source, their order, the
 * passwd file rules, profiles and regions, the JSON reader, and ECS / IMDSv2
 * against tests/creds/fake_metadata.py (argv[1]), including refreshes,
 * failed refreshes and eight threads racing a refresh.
 *
 * creds.c is included rather than linked so that the test reaches its
 * static JSON reader and its two knobs: where /etc's passwd file is, and how
 * long to wait between failed refresh attempts.  HOME points at a temporary
 * directory; the real /etc/passwd-s3fs and ~/.aws are never read.
 */
#include "creds.c"

#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>

#include "../check.h"

#define CHECK_HAS(hay, needle)                                                                     \
	do {                                                                                       \
		const char *hay_ = (hay), *needle_ = (needle);                                     \
		if (!hay_ || !strstr(hay_, needle_)) {                                             \
			fprintf(stderr, "%s:%d: %s: \"%s\" not in \"%s\"\n", __FILE__, __LINE__,   \
			        __func__, needle_, hay_ ? hay_ : "(null)");                        \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

/* ---------------------------------------------------------------- fixtures */

static char tmpdir[PATH_MAX];
static char etc_passwd[PATH_MAX + 32];

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char logbuf[1 << 20];
static size_t log_len;

static void test_log(int level, const char *fmt, va_list ap)
{
	pthread_mutex_lock(&log_lock);
	if (log_len < sizeof(logbuf) - 256) {
		log_len += (size_t)snprintf(logbuf + log_len, sizeof(logbuf) - log_len, "<%d> ",
		                            level);
		log_len += (size_t)vsnprintf(logbuf + log_len, sizeof(logbuf) - log_len, fmt, ap);
		log_len += (size_t)snprintf(logbuf + log_len, sizeof(logbuf) - log_len, "\n");
	}
	pthread_mutex_unlock(&log_lock);
}

/* What was logged since `mark` (a copy). */
static char *log_since(size_t mark)
{
	char *s;

	pthread_mutex_lock(&log_lock);
	s = strdup(logbuf + mark);
	pthread_mutex_unlock(&log_lock);
	return s;
}

static size_t log_mark(void)
{
	size_t m;

	pthread_mutex_lock(&log_lock);
	m = log_len;
	pthread_mutex_unlock(&log_lock);
	return m;
}

static const char *tpath(const char *name)
{
	static char buf[4][PATH_MAX + 64];
	static int i;

	i = (i + 1) % 4;
	snprintf(buf[i], sizeof(buf[i]), "%s/%s", tmpdir, name);
	return buf[i];
}

static void write_file(const char *path, mode_t mode, const char *content)
{
	int fd;

	unlink(path);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, content, strlen(content)) != (ssize_t)strlen(content)) {
		fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
		exit(2);
	}
	fchmod(fd, mode);
	close(fd);
}

static const char *const aws_vars[] = {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        "AWS_EC2_METADATA_DISABLED",
};

/* A clean slate: no AWS variables, no files, IMDS off (each test that
 * wants it points it at the fake server). */
static void reset(void)
{
	for (size_t i = 0; i < sizeof(aws_vars) / sizeof(aws_vars[0]); i++)
		unsetenv(aws_vars[i]);
	setenv("HOME", tmpdir, 1);
	setenv("AWS_EC2_METADATA_DISABLED", "true", 1);
	unlink(tpath(".aws/credentials"));
	unlink(tpath(".aws/config"));
	unlink(tpath(".passwd-s3fs"));
	unlink(tpath("passwd"));
	unlink(tpath("alt-credentials"));
	unlink(tpath("alt-config"));
	unlink(etc_passwd);
}

static s3_cred_provider *make(const char *passwd_file, const char *profile, const char *bucket,
                              char *errbuf, size_t errlen)
{
	s3_cred_options o = {
	        .passwd_file = passwd_file,
	        .profile = profile,
	        .bucket = bucket ? bucket : "mybucket",
	        .log = test_log,
	        .log_level = S3_LOG_DEBUG,
	};

	errbuf[0] = '\0';
	return s3_creds_new(&o, errbuf, errlen);
}

/* Expects the chain to succeed with this source and key id. */
static void expect_creds(const char *passwd_file, const char *profile, const char *bucket,
                         const char *source, const char *ak, const char *sk)
{
	char errbuf[512];
	s3_cred_provider *p = make(passwd_file, profile, bucket, errbuf, sizeof(errbuf));
	s3_credentials c;
	s3_error err;

	if (!p) {
		fprintf(stderr, "  (s3_creds_new: %s)\n", errbuf);
		CHECK(p != NULL);
		return;
	}
	CHECK_STR(s3_creds_source(p), source);
	CHECK(s3_creds_get(p, &c, &err) == 0);
	CHECK_STR(c.access_key, ak);
	if (sk)
		CHECK_STR(c.secret_key, sk);
	s3_credentials_clear(&c);
	s3_creds_free(p);
}

/* Expects the chain to fail with a message containing `msg`. */
static void expect_error(const char *passwd_file, const char *profile, const char *msg)
{
	char errbuf[512];
	s3_cred_provider *p = make(passwd_file, profile, NULL, errbuf, sizeof(errbuf));

	CHECK(p == NULL);
	CHECK_HAS(errbuf, msg);
	s3_creds_free(p);
}

/* ---------------------------------------------------------------- the fake server */

static pid_t server_pid;
static int server_stdin = -1, server_stdout = -1;
static char server_url[64];

static void server_start(const char *script)
{
	int in[2], out[2];
	char line[32] = "";
	size_t n = 0;

	if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC)) {
		perror("pipe2");
		exit(2);
	}
	server_pid = fork();
	if (server_pid == 0) {
		dup2(in[0], 0);
		dup2(out[1], 1);
		execl("/usr/bin/python3", "python3", script, (char *)NULL);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	server_stdin = in[1];
	/* Read up to the newline; the pipe stays open until server_stop() so
	 * that the server never writes into a closed one. */
	server_stdout = out[0];
	while (n < sizeof(line) - 1 && !strchr(line, '\n')) {
		struct pollfd pfd = {.fd = out[0], .events = POLLIN};
		ssize_t got;

		if (poll(&pfd, 1, 20000) != 1)
			break;
		got = read(out[0], line + n, sizeof(line) - 1 - n);
		if (got <= 0)
			break;
		n += (size_t)got;
	}
	if (!strchr(line, '\n') || atoi(line) <= 0) {
		fprintf(stderr, "fake_metadata.py did not start\n");
		exit(2);
	}
	snprintf(server_url, sizeof(server_url), "http://127.0.0.1:%d", atoi(line));
}

static void server_stop(void)
{
	int status;

	if (server_pid <= 0)
		return;
	close(server_stdin);
	close(server_stdout);
	kill(server_pid, SIGTERM);
	waitpid(server_pid, &status, 0);
	server_pid = 0;
}

static void server_control(const char *query)
{
	char url[256], *body = NULL;
	size_t len = 0;
	s3_error err;

	snprintf(url, sizeof(url), "%s/_control?%s", server_url, query);
	CHECK(creds_http1("PUT", url, NULL, NULL, &body, &len, &err) == 0);
	creds_free_buf(body, len + 1);
}

/* One counter of the server. */
static long server_stat(const char *name)
{
	char url[128], key[64], *body = NULL, *at;
	size_t len = 0;
	s3_error err;
	long v = -1;

	snprintf(url, sizeof(url), "%s/_stats", server_url);
	snprintf(key, sizeof(key), "%s=", name);
	if (creds_http1("GET", url, NULL, NULL, &body, &len, &err) == 0) {
		at = strstr(body, key);
		if (at)
			v = strtol(at + strlen(key), NULL, 10);
	}
	creds_free_buf(body, len + 1);
	return v;
}

static void use_imds(void)
{
	unsetenv("AWS_EC2_METADATA_DISABLED");
	setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server_url, 1);
}

static void sleep_until_ns(int64_t t)
{
	struct timespec ts = {.tv_sec = t / CREDS_NS_PER_S, .tv_nsec = t % CREDS_NS_PER_S};

	while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* The serial fake_metadata.py puts at the end of every key, secret, token. */
static int serial_of(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	while (n && isdigit((unsigned char)s[n - 1]))
		n--;
	return s && s[n] ? atoi(s + n) : -1;
}

/* ---------------------------------------------------------------- JSON */

static const char json_ok[] =
        "{ \"Code\" : \"Success\", \"n\": -12.5e+3, \"z\": 0, \"t\": true, \"f\": false,\r\n"
        "  \"x\": null, \"deep\": {\"a\": [1, [2, {\"b\": \"c\\\"}\"}], []], \"e\": {}},\n"
        "  \"AccessKeyId\": \"AK\\/\\\\\\\"\\b\\f\\n\\r\\t\",\n"
        "  \"Token\": \"\\u00e9\\u20AC\\ud83d\\ude00x\", \"AccessKeyId2\": \"\" }";

static void test_json_fields(void)
{
	struct creds_json_field f[] = {{"AccessKeyId", NULL},
	                               {"Token", NULL},
	                               {"Code", NULL},
	                               {"Missing", NULL},
	                               {"AccessKeyId2", NULL}};

	CHECK(creds_json_fields(json_ok, strlen(json_ok), f, 5) == 0);
	CHECK_STR(f[0].value, "AK/\\\"\b\f\n\r\t");
	CHECK_STR(f[1].value, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80x");
	CHECK_STR(f[2].value, "Success");
	CHECK(f[3].value == NULL);
	CHECK_STR(f[4].value, "");
	for (int i = 0; i < 5; i++)
		free(f[i].value);

	CHECK(creds_json_fields("{}", 2, f, 1) == 0 && f[0].value == NULL);
	CHECK(creds_json_fields(" \n{ } \n", 7, f, 1) == 0);
}

static void test_json_rejects(void)
{
	static const char *const bad[] = {
	        "",
	        "{",
	        "[\"Token\", \"x\"]",
	        "\"Token\"",
	        "{\"Token\"}",
	        "{\"Token\":}",
	        "{\"Token\":\"x\",}",
	        "{\"Token\":\"x\"} x",
	        "{\"Token\":\"x\"}}",
	        "{\"Token\":\"x\" \"A\":\"y\"}",
	        "{'Token':'x'}",
	        "{Token:\"x\"}",
	        "{\"Token\":\"x\",\"Token\":\"y\"}",
	        "{\"Token\":1}",
	        "{\"Token\":null}",
	        "{\"Token\":\"\\u12\"}",
	        "{\"Token\":\"\\u12G4\"}",
	        "{\"Token\":\"\\ud800\"}",
	        "{\"Token\":\"\\ud800\\u0041\"}",
	        "{\"Token\":\"\\udc00\"}",
	        "{\"Token\":\"\\u0000\"}",
	        "{\"Token\":\"a\nb\"}",
	        "{\"Token\":\"\\x\"}",
	        "{\"Token\":\"abc}",
	        "{\"Token\":\"abc\\\"}",
	        "{\"a\":01}",
	        "{\"a\":-}",
	        "{\"a\":1.}",
	        "{\"a\":1e}",
	        "{\"a\":+1}",
	        "{\"a\":tru}",
	        "{\"a\":nul}",
	        "{\"a\":[1,]}",
	        "{\"a\":[1 2]}",
	        "{\"a\":{\"b\"}}",
	        "{\"a\":{1:2}}",
	};
	struct creds_json_field f[] = {{"Token", NULL}};
	char deep[200];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = creds_json_fields(bad[i], strlen(bad[i]), f, 1);
		if (r != -EPROTO)
			fprintf(stderr, "  accepted: %s\n", bad[i]);
		CHECK(r == -EPROTO);
		CHECK(f[0].value == NULL);
	}
	/* Nesting is bounded. */
	memset(deep, '[', sizeof(deep));
	memcpy(deep, "{\"a\":", 5);
	CHECK(creds_json_fields(deep, sizeof(deep), f, 1) == -EPROTO);
	/* A NUL byte inside the buffer is a control character, not an end. */
	CHECK(creds_json_fields("{\"Token\":\"a\0b\"}", 15, f, 1) == -EPROTO);
}

/* Every prefix and many mutations of a valid document, each in a buffer of
 * its exact size so that AddressSanitizer sees any read past the end. */
static void test_json_fuzz(void)
{
	struct creds_json_field f[] = {{"AccessKeyId", NULL}, {"Token", NULL}};
	size_t n = strlen(json_ok);
	unsigned seed = 12345;
	int accepted = 0;

	for (size_t len = 0; len < n; len++) {
		char *b = malloc(len ? len : 1);
		memcpy(b, json_ok, len);
		CHECK(creds_json_fields(b, len, f, 2) == -EPROTO);
		free(b);
	}
	for (int iter = 0; iter < 20000; iter++) {
		char *b = malloc(n);
		memcpy(b, json_ok, n);
		for (int k = 0; k < 1 + iter % 4; k++) {
			seed = seed * 1103515245 + 12345;
			b[(seed >> 8) % n] = (char)(seed >> 20);
		}
		if (creds_json_fields(b, n, f, 2) == 0) {
			accepted++;
			CHECK(!f[0].value || strlen(f[0].value) < n);
			free(f[0].value);
			free(f[1].value);
		} else {
			CHECK(!f[0].value && !f[1].value);
		}
		free(b);
	}
	/* Some mutations (inside strings) stay valid, most do not. */
	CHECK(accepted > 0 && accepted < 20000);
}

/* ---------------------------------------------------------------- passwd files */

static void test_passwd_lines(void)
{
	char source[PATH_MAX + 64];

	reset();
	write_file(tpath("passwd"), 0600,
	           "# bucketfs test\r\n"
	           "\r\n"
	           "other:AKOTHER:SKOTHER\r\n"
	           "AKDEFAULT:SKDEFAULT\r\n"
	           "  mybucket:AKMINE:SKMINE  \r\n"
	           "mybucket:AKMINE2:SKMINE2\r\n");
	snprintf(source, sizeof(source), "passwd_file %s", tpath("passwd"));
	/* The bucket's own line wins over the default, wherever it is. */
	expect_creds(tpath("passwd"), NULL, "mybucket", source, "AKMINE", "SKMINE");
	expect_creds(tpath("passwd"), NULL, "other", source, "AKOTHER", "SKOTHER");
	expect_creds(tpath("passwd"), NULL, "third", source, "AKDEFAULT", "SKDEFAULT");

	/* Only other buckets' lines: the option's file must serve this one. */
	write_file(tpath("passwd"), 0600, "other:AKOTHER:SKOTHER\n");
	expect_error(tpath("passwd"), NULL, "has no credentials for bucket mybucket");

	/* A bad line is refused, named by number, never quoted. */
	write_file(tpath("passwd"), 0600, "# c\nAKGOOD:SKGOOD\nAKBAD S3CR3T\n");
	expect_error(tpath("passwd"), NULL, "line 3: expected ACCESSKEY:SECRET");
	write_file(tpath("passwd"), 0600, "a:b:c:S3CR3T\n");
	expect_error(tpath("passwd"), NULL, "line 1");
	write_file(tpath("passwd"), 0600, "mybucket::S3CR3T\n");
	expect_error(tpath("passwd"), NULL, "line 1");
	write_file(tpath("passwd"), 0600, "AK1:SK1\nAK2:SK2\n");
	expect_error(tpath("passwd"), NULL, "more than one ACCESSKEY:SECRET line");
}

static void test_passwd_permissions(void)
{
	char msg[PATH_MAX + 128], source[PATH_MAX + 64];

	reset();
	snprintf(source, sizeof(source), "passwd_file %s", tpath("passwd"));
	write_file(tpath("passwd"), 0644, "AKPERM:SKPERM\n");
	snprintf(msg, sizeof(msg),
	         "passwd file %s has mode 0644: it must not be readable by group or others "
	         "(chmod 600)",
	         tpath("passwd"));
	expect_error(tpath("passwd"), NULL, msg);
	write_file(tpath("passwd"), 0640, "AKPERM:SKPERM\n");
	expect_error(tpath("passwd"), NULL, "mode 0640");
	write_file(tpath("passwd"), 0602, "AKPERM:SKPERM\n");
	expect_error(tpath("passwd"), NULL, "mode 0602");
	write_file(tpath("passwd"), 0600, "AKPERM:SKPERM\n");
	expect_creds(tpath("passwd"), NULL, NULL, source, "AKPERM", "SKPERM");
	write_file(tpath("passwd"), 0400, "AKPERM:SKPERM\n");
	expect_creds(tpath("passwd"), NULL, NULL, source, "AKPERM", "SKPERM");

	/* The option's file must exist. */
	expect_error(tpath("nonexistent"), NULL, "does not exist");

	/* ~/.passwd-s3fs and /etc's are refused too, not skipped. */
	write_file(tpath(".passwd-s3fs"), 0644, "AKHOME:SKHOME\n");
	expect_error(NULL, NULL, "/.passwd-s3fs has mode 0644");
	unlink(tpath(".passwd-s3fs"));
	write_file(etc_passwd, 0604, "AKETC:SKETC\n");
	expect_error(NULL, NULL, "etc-passwd-s3fs has mode 0604");
}

/* ---------------------------------------------------------------- environment */

static void test_env(void)
{
	char errbuf[512];
	s3_cred_provider *p;
	s3_credentials c;
	s3_error err;

	reset();
	setenv("AWS_ACCESS_KEY_ID", "AKENV", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "SKENV", 1);
	setenv("AWS_SESSION_TOKEN", "TOKENV", 1);
	p = make(NULL, NULL, NULL, errbuf, sizeof(errbuf));
	CHECK(p != NULL);
	if (p) {
		CHECK_STR(s3_creds_source(p), "environment");
		CHECK(s3_creds_get(p, &c, &err) == 0);
		CHECK_STR(c.access_key, "AKENV");
		CHECK_STR(c.secret_key, "SKENV");
		CHECK_STR(c.session_token, "TOKENV");
		CHECK(c.expiration == 0);
		s3_credentials_clear(&c);
		CHECK(c.access_key == NULL && c.secret_key == NULL && c.session_token == NULL);
		s3_creds_free(p);
	}

	/* No token: NULL, not "". */
	setenv("AWS_SESSION_TOKEN", "", 1);
	p = make(NULL, NULL, NULL, errbuf, sizeof(errbuf));
	CHECK(p != NULL);
	if (p) {
		CHECK(s3_creds_get(p, &c, &err) == 0);
		CHECK(c.session_token == NULL);
		s3_credentials_clear(&c);
		s3_creds_free(p);
	}

	unsetenv("AWS_SECRET_ACCESS_KEY");
	expect_error(NULL, NULL, "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not");
}

/* ---------------------------------------------------------------- profiles */

static void test_profiles(void)
{
	char errbuf[512], msg[2 * PATH_MAX + 128];
	s3_cred_provider *p;
	char *region;

	reset();
	mkdir(tpath(".aws"), 0700);
	write_file(tpath(".aws/credentials"), 0600,
	           "[default]\n"
	           "aws_access_key_id = AKDEF\n"
	           "aws_secret_access_key = SKDEF\n"
	           "\n"
	           "[work]\r\n"
	           "; a comment\r\n"
	           "AWS_ACCESS_KEY_ID=AKWORK\r\n"
	           "aws_secret_access_key: SKWORK\r\n"
	           "aws_session_token = TKWORK\r\n");
	write_file(tpath(".aws/config"), 0644,
	           "[default]\n"
	           "region = us-west-2\n"
	           "[profile work]\n"
	           "s3 =\n"
	           "    region = nested-must-not-win\n"
	           "  addressing_style = path\n"
	           "region = eu-west-3\n"
	           "[profile cfgonly]\n"
	           "aws_access_key_id = AKCFG\n"
	           "aws_secret_access_key = SKCFG\n"
	           "[work]\n"
	           "region = not-a-config-profile-section\n"
	           "[profile both]\n"
	           "aws_access_key_id = AKBOTHCFG\n"
	           "aws_secret_access_key = SKBOTHCFG\n"
	           "[profile assume]\n"
	           "role_arn = arn:aws:iam::123456789012:role/x\n"
	           "source_profile = default\n");

	expect_creds(NULL, NULL, NULL, "profile default", "AKDEF", "SKDEF");
	p = make(NULL, NULL, NULL, errbuf, sizeof(errbuf));
	region = p ? s3_creds_region(p) : NULL;
	CHECK_STR(region, "us-west-2");
	free(region);
	s3_creds_free(p);

	/* The option names the profile; its region is from "[profile work]". */
	expect_creds(NULL, "work", NULL, "profile work", "AKWORK", "SKWORK");
	p = make(NULL, "work", NULL, errbuf, sizeof(errbuf));
	region = p ? s3_creds_region(p) : NULL;
	CHECK_STR(region, "eu-west-3");
	free(region);
	if (p) {
		s3_credentials c;
		s3_error err;
		CHECK(s3_creds_get(p, &c, &err) == 0);
		CHECK_STR(c.session_token, "TKWORK");
		s3_credentials_clear(&c);
	}
	s3_creds_free(p);

	/* AWS_PROFILE, and the option over it. */
	setenv("AWS_PROFILE", "work", 1);
	expect_creds(NULL, NULL, NULL, "profile work", "AKWORK", NULL);
	setenv("AWS_PROFILE", "nope", 1);
	expect_creds(NULL, "work", NULL, "profile work", "AKWORK", NULL);

	/* Asked for by name and missing: an error, not the next source. */
	write_file(tpath(".passwd-s3fs"), 0600, "AKHOME:SKHOME\n");
	snprintf(msg, sizeof(msg), "profile nope not found in %s or %s", tpath(".aws/credentials"),
	         tpath(".aws/config"));
	expect_error(NULL, NULL, msg);
	unsetenv("AWS_PROFILE");
	expect_error(NULL, "nope", "profile nope not found in");
	/* The default profile, when missing, is simply skipped. */
	write_file(tpath(".aws/credentials"), 0600,
	           "[work]\naws_access_key_id = AKWORK\n"
	           "aws_secret_access_key = SKWORK\n");
	write_file(tpath(".aws/config"), 0600, "[profile work]\nregion = eu-west-3\n");
	snprintf(msg, sizeof(msg), "passwd_file %s", tpath(".passwd-s3fs"));
	expect_creds(NULL, NULL, NULL, msg, "AKHOME", "SKHOME");
	unlink(tpath(".passwd-s3fs"));

	/* Keys in the config file; the credentials file wins over it. */
	write_file(tpath(".aws/credentials"), 0600,
	           "[both]\naws_access_key_id = AKBOTH\naws_secret_access_key = SKBOTH\n");
	write_file(tpath(".aws/config"), 0600,
	           "[profile cfgonly]\naws_access_key_id = AKCFG\naws_secret_access_key = SKCFG\n"
	           "[profile both]\naws_access_key_id = AKBOTHCFG\n"
	           "aws_secret_access_key = SKBOTHCFG\nregion = ap-northeast-3\n"
	           "[profile half]\naws_access_key_id = AKHALF\n"
	           "[profile assume]\nrole_arn = arn:aws:iam::123456789012:role/x\n");
	expect_creds(NULL, "cfgonly", NULL, "profile cfgonly", "AKCFG", "SKCFG");
	expect_creds(NULL, "both", NULL, "profile both", "AKBOTH", "SKBOTH");
	expect_error(NULL, "half", "has aws_access_key_id but not aws_secret_access_key");
	expect_error(NULL, "assume", "uses role_arn, which bucketfs does not support");

	/* The files' locations from the environment. */
	rename(tpath(".aws/credentials"), tpath("alt-credentials"));
	rename(tpath(".aws/config"), tpath("alt-config"));
	expect_error(NULL, "both", "profile both not found");
	setenv("AWS_SHARED_CREDENTIALS_FILE", tpath("alt-credentials"), 1);
	setenv("AWS_CONFIG_FILE", tpath("alt-config"), 1);
	expect_creds(NULL, "both", NULL, "profile both", "AKBOTH", "SKBOTH");
	p = make(NULL, "both", NULL, errbuf, sizeof(errbuf));
	region = p ? s3_creds_region(p) : NULL;
	CHECK_STR(region, "ap-northeast-3");
	free(region);
	s3_creds_free(p);

	/* A malformed file is an error once the chain reaches it... */
	write_file(tpath("alt-config"), 0600, "[profile both\n");
	expect_error(NULL, "both", "alt-config line 1: expected [SECTION]");
	/* ... and only a warning when an earlier source wins. */
	setenv("AWS_ACCESS_KEY_ID", "AKENV", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "SKENV", 1);
	expect_creds(NULL, "both", NULL, "environment", "AKENV", "SKENV");
}

static void test_region_order(void)
{
	char errbuf[512];
	s3_cred_provider *p;
	char *region;

	reset();
	setenv("AWS_ACCESS_KEY_ID", "AKENV", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "SKENV", 1);
	p = make(NULL, NULL, NULL, errbuf, sizeof(errbuf));
	region = p ? s3_creds_region(p) : (char *)"x";
	CHECK(region == NULL);
	setenv("AWS_DEFAULT_REGION", "from-default-region", 1);
	region = p ? s3_creds_region(p) : NULL;
	CHECK_STR(region, "from-default-region");
	free(region);
	setenv("AWS_REGION", "from-region", 1);
	region = p ? s3_creds_region(p) : NULL;
	CHECK_STR(region, "from-region");
	free(region);
	s3_creds_free(p);

	/* The profile's region comes first, whatever the credentials' source. */
	mkdir(tpath(".aws"), 0700);
	write_file(tpath(".aws/config"), 0600, "[default]\nregion = from-profile\n");
	p = make(NULL, NULL, NULL, errbuf, sizeof(errbuf));
	CHECK(p && strcmp(s3_creds_source(p), "environment") == 0);
	region = p ? s3_creds_region(p) : NULL;
	CHECK_STR(region, "from-profile");
	free(region);
	s3_creds_free(p);
}

/* ---------------------------------------------------------------- the chain */

/* All sources present; each removed in turn reveals the next. */
static void test_chain_order(void)
{
	char home_src[PATH_MAX + 64], etc_src[PATH_MAX + 64], opt_src[PATH_MAX + 64];
	char errbuf[512], ecs_url[128];
	s3_cred_provider *p;
	char *region;

	reset();
	snprintf(opt_src, sizeof(opt_src), "passwd_file %s", tpath("passwd"));
	snprintf(home_src, sizeof(home_src), "passwd_file %s", tpath(".passwd-s3fs"));
	snprintf(etc_src, sizeof(etc_src), "passwd_file %s", etc_passwd);
	snprintf(ecs_url, sizeof(ecs_url), "%s/ecs/creds", server_url);
	server_control("fail=0&lifetime=3600&delay=0");

	write_file(tpath("passwd"), 0600, "AKOPT:SKOPT\n");
	setenv("AWS_ACCESS_KEY_ID", "AKENV", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "SKENV", 1);
	mkdir(tpath(".aws"), 0700);
	write_file(tpath(".aws/credentials"), 0600,
	           "[default]\naws_access_key_id=AKPROF\naws_secret_access_key=SKPROF\n");
	write_file(tpath(".passwd-s3fs"), 0600, "AKHOME:SKHOME\n");
	write_file(etc_passwd, 0600, "AKETC:SKETC\n");
	setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", ecs_url, 1);
	setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "ecs-auth-T0K3N", 1);
	use_imds();

	expect_creds(tpath("passwd"), NULL, NULL, opt_src, "AKOPT", "SKOPT");
	expect_creds(NULL, NULL, NULL, "environment", "AKENV", "SKENV");
	unsetenv("AWS_ACCESS_KEY_ID");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	expect_creds(NULL, NULL, NULL, "profile default", "AKPROF", "SKPROF");
	unlink(tpath(".aws/credentials"));
	expect_creds(NULL, NULL, NULL, home_src, "AKHOME", "SKHOME");
	unlink(tpath(".passwd-s3fs"));
	expect_creds(NULL, NULL, NULL, etc_src, "AKETC", "SKETC");
	unlink(etc_passwd);
	p = make(NULL, NULL, NULL, errbuf, sizeof(errbuf));
	CHECK(p && strcmp(s3_creds_source(p), "ECS container") == 0);
	s3_creds_free(p);
	unsetenv("AWS_CONTAINER_CREDENTIALS_FULL_URI");
	p = make(NULL, NULL, NULL, errbuf, sizeof(errbuf));
	CHECK(p && strcmp(s3_creds_source(p), "EC2 instance role bucketfs-test-role") == 0);
	/* With no profile and no AWS_REGION, the instance's region. */
	region = p ? s3_creds_region(p) : NULL;
	CHECK_STR(region, "eu-fake-1");
	free(region);
	setenv("AWS_REGION", "from-env", 1);
	region = p ? s3_creds_region(p) : NULL;
	CHECK_STR(region, "from-env");
	free(region);
	s3_creds_free(p);
}

static void test_nothing_found(void)
{
	char errbuf[1024], want[1024 + 4 * PATH_MAX];
	s3_cred_provider *p;

	reset();
	/* A closed port: IMDS is tried and fails at once. */
	unsetenv("AWS_EC2_METADATA_DISABLED");
	setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:1/", 1);
	p = make(NULL, NULL, NULL, errbuf, sizeof(errbuf));
	CHECK(p == NULL);
	snprintf(want, sizeof(want),
	         "no credentials found (looked in: passwd_file option, environment "
	         "(AWS_ACCESS_KEY_ID), profile default in %s/.aws/credentials and "
	         "%s/.aws/config, %s/.passwd-s3fs, %s, ECS container endpoint, EC2 instance "
	         "metadata http://127.0.0.1:1)",
	         tmpdir, tmpdir, tmpdir, etc_passwd);
	CHECK_STR(errbuf, want);

	setenv("AWS_EC2_METADATA_DISABLED", "TRUE", 1);
	p = make(NULL, NULL, NULL, errbuf, sizeof(errbuf));
	CHECK(p == NULL);
	CHECK_HAS(errbuf, "EC2 instance metadata (disabled by AWS_EC2_METADATA_DISABLED))");

	unsetenv("HOME");
	p = make(NULL, NULL, NULL, errbuf, sizeof(errbuf));
	CHECK(p == NULL);
	CHECK_HAS(errbuf, "~/.passwd-s3fs (HOME not set)");
	setenv("HOME", tmpdir, 1);
}

/* ---------------------------------------------------------------- ECS */

static void test_ecs(void)
{
	char errbuf[512], url[128];
	s3_cred_provider *p;
	s3_credentials c;
	s3_error err;
	long gets;

	reset();
	server_control("fail=0&lifetime=3600&delay=0");
	snprintf(url, sizeof(url), "%s/ecs/creds", server_url);
	setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", url, 1);
	setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "ecs-auth-T0K3N", 1);
	gets = server_stat("ecs_get");
	p = make(NULL, NULL, NULL, errbuf, sizeof(errbuf));
	CHECK(p != NULL);
	if (p) {
		int n;
		CHECK_STR(s3_creds_source(p), "ECS container");
		CHECK(s3_creds_get(p, &c, &err) == 0);
		n = serial_of(c.access_key);
		CHECK(strncmp(c.access_key, "ASIAECS", 7) == 0 && n > 0);
		/* The escapes of fake_metadata.py, decoded. */
		CHECK(strncmp(c.secret_key, "ecs-S3CR3T\"\\/-", 14) == 0);
		CHECK(serial_of(c.secret_key) == n);
		CHECK(strncmp(c.session_token, "ecs-T0K3N-\xc3\x89\xf0\x9f\x98\x80-", 17) == 0);
		CHECK(c.expiration > time(NULL) + 3000 && c.expiration <= time(NULL) + 3600);
		s3_credentials_clear(&c);
		CHECK(server_stat("ecs_get") == gets + 1);
		s3_creds_free(p);
	}

	/* The token from a file (EKS), read at each fetch. */
	unsetenv("AWS_CONTAINER_AUTHORIZATION_TOKEN");
	write_file(tpath("ecs-token"), 0600, "ecs-auth-T0K3N\n");
	setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", tpath("ecs-token"), 1);
	p = make(NULL, NULL, NULL, errbuf, sizeof(errbuf));
	CHECK(p != NULL);
	s3_creds_free(p);

	/* A wrong token: the container's endpoint is authoritative. */
	write_file(tpath("ecs-token"), 0600, "wrong\n");
	expect_error(NULL, NULL, "ECS container credentials: GET http://127.0.0.1:");
	expect_error(NULL, NULL, "/ecs/creds: HTTP 401");
	unlink(tpath("ecs-token"));
	unsetenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");

	/* Plain http only to loopback or the ECS / EKS addresses. */
	setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://203.0.113.9/creds", 1);
	expect_error(NULL, NULL, "only https, loopback and the ECS/EKS addresses are allowed");
	setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1.evil.example/x", 1);
	expect_error(NULL, NULL, "are allowed");
	CHECK(creds_ecs_url_allowed("https://creds.example.com/x"));
	CHECK(creds_ecs_url_allowed("http://169.254.170.23/v1/credentials"));
	CHECK(creds_ecs_url_allowed("http://[::1]:8080/x"));
	CHECK(creds_ecs_url_allowed("http://localhost/x"));
	CHECK(!creds_ecs_url_allowed("ftp://127.0.0.1/x"));

	/* The relative URI is appended to ECS's own address. */
	unsetenv("AWS_CONTAINER_CREDENTIALS_FULL_URI");
	setenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/credentials/abc-123", 1);
	expect_error(NULL, NULL, "GET http://169.254.170.2/v2/credentials/abc-123: ");
}

/* ---------------------------------------------------------------- IMDS */

static void test_imds_fetch(void)
{
	long put = server_stat("token_put"), role = server_stat("role_get");
	long creds = server_stat("creds_get"), region = server_stat("region_get");
	long rejected = server_stat("rejected");
	char errbuf[512], url[128], *body = NULL;
	s3_cred_provider *p;
	s3_credentials c;
	size_t len = 0;
	s3_error err;

	reset();
	server_control("fail=0&lifetime=3600&delay=0");
	use_imds();
	p = make(NULL, NULL, NULL, errbuf, sizeof(errbuf));
	CHECK(p != NULL);
	if (!p)
		return;
	CHECK_STR(s3_creds_source(p), "EC2 instance role bucketfs-test-role");
	CHECK(s3_creds_get(p, &c, &err) == 0);
	CHECK(strncmp(c.access_key, "ASIAIMDS", 8) == 0);
	CHECK(serial_of(c.secret_key) == serial_of(c.access_key));
	CHECK(serial_of(c.session_token) == serial_of(c.access_key));
	CHECK(c.expiration > time(NULL) + 3000);
	s3_credentials_clear(&c);
	/* One token, one role lookup, one credentials fetch, one region; and
	 * every metadata GET carried the token. */
	CHECK(server_stat("token_put") == put + 1);
	CHECK(server_stat("role_get") == role + 1);
	CHECK(server_stat("creds_get") == creds + 1);
	CHECK(server_stat("region_get") == region + 1);
	CHECK(server_stat("rejected") == rejected);
	s3_creds_free(p);

	/* The fake really insists on the token. */
	snprintf(url, sizeof(url), "%s" CREDS_IMDS_CREDS_PATH, server_url);
	CHECK(creds_http1("GET", url, NULL, NULL, &body, &len, &err) == -EIO);
	CHECK(err.http_status == 401);
	CHECK(server_stat("rejected") == rejected + 1);

	/* Trailing slashes of the endpoint are harmless. */
	snprintf(url, sizeof(url), "%s//", server_url);
	setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", url, 1);
	p = make(NULL, NULL, NULL, errbuf, sizeof(errbuf));
	CHECK(p != NULL);
	s3_creds_free(p);
}

/* Credentials that expire in 4 s are due for refresh in the last quarter
 * of their lifetime; a get then fetches a new set. */
static void test_imds_refresh(void)
{
	s3_credentials c1, c2, c3;
	char errbuf[512];
	s3_cred_provider *p;
	long creds, put, role;
	s3_error err;

	reset();
	server_control("fail=0&lifetime=4&delay=0");
	use_imds();
	p = make(NULL, NULL, NULL, errbuf, sizeof(errbuf));
	CHECK(p != NULL);
	if (!p)
		return;
	CHECK(s3_creds_get(p, &c1, &err) == 0);
	creds = server_stat("creds_get");
	put = server_stat("token_put");
	role = server_stat("role_get");

	/* Fresh: a copy, no request. */
	CHECK(s3_creds_get(p, &c2, &err) == 0);
	CHECK_STR(c2.access_key, c1.access_key);
	CHECK(c2.access_key != c1.access_key);
	CHECK(server_stat("creds_get") == creds);

	sleep_until_ns((int64_t)c1.expiration * CREDS_NS_PER_S - 600 * 1000000);
	CHECK(s3_creds_get(p, &c3, &err) == 0);
	CHECK(strcmp(c3.access_key, c1.access_key) != 0);
	CHECK(serial_of(c3.access_key) > serial_of(c1.access_key));
	CHECK(serial_of(c3.secret_key) == serial_of(c3.access_key));
	CHECK(c3.expiration > c1.expiration);
	/* A new session token, the role remembered. */
	CHECK(server_stat("creds_get") == creds + 1);
	CHECK(server_stat("token_put") == put + 1);
	CHECK(server_stat("role_get") == role);
	s3_credentials_clear(&c1);
	s3_credentials_clear(&c2);
	s3_credentials_clear(&c3);
	s3_creds_free(p);
}

/* A failed refresh keeps the current credentials while they are valid (with
 * a warning), then fails; attempts are spaced; a later success recovers. */
static void test_imds_refresh_failure(void)
{
	s3_credentials c1, c;
	char errbuf[512], *log;
	s3_cred_provider *p;
	size_t mark;
	s3_error err;
	long creds;

	reset();
	server_control("fail=0&lifetime=4&delay=0");
	use_imds();
	p = make(NULL, NULL, NULL, errbuf, sizeof(errbuf));
	CHECK(p != NULL);
	if (!p)
		return;
	CHECK(s3_creds_get(p, &c1, &err) == 0);
	server_control("fail=1");

	sleep_until_ns((int64_t)c1.expiration * CREDS_NS_PER_S - 600 * 1000000);
	creds = server_stat("creds_get");
	mark = log_mark();
	CHECK(s3_creds_get(p, &c, &err) == 0);
	CHECK_STR(c.access_key, c1.access_key);
	s3_credentials_clear(&c);
	CHECK(server_stat("creds_get") == creds + 1);
	log = log_since(mark);
	CHECK_HAS(log, "<1> credentials: refreshing EC2 instance role bucketfs-test-role failed, "
	               "still using the current ones");
	CHECK_HAS(log, "HTTP 500");
	free(log);

	/* Within the retry interval: no new attempt. */
	CHECK(s3_creds_get(p, &c, &err) == 0);
	CHECK_STR(c.access_key, c1.access_key);
	s3_credentials_clear(&c);
	CHECK(server_stat("creds_get") == creds + 1);

	/* Expired, and the endpoint still failing: an error. */
	sleep_until_ns((int64_t)c1.expiration * CREDS_NS_PER_S + 200 * 1000000);
	CHECK(s3_creds_get(p, &c, &err) == -EIO);
	CHECK(c.access_key == NULL);
	CHECK_HAS(err.message, "credentials from EC2 instance role bucketfs-test-role expired; "
	                       "refreshing failed: GET http://127.0.0.1:");
	CHECK(server_stat("creds_get") == creds + 2);
	CHECK(s3_creds_get(p, &c, &err) == -EIO);
	CHECK(server_stat("creds_get") == creds + 2);

	server_control("fail=0");
	usleep(600 * 1000);
	CHECK(s3_creds_get(p, &c, &err) == 0);
	CHECK(c.access_key && strcmp(c.access_key, c1.access_key) != 0);
	CHECK(c.expiration > time(NULL));
	s3_credentials_clear(&c);
	s3_credentials_clear(&c1);
	s3_creds_free(p);
}

struct racer {
	s3_cred_provider *p;
	int64_t until_ns;
	int calls, errors, mixed, stale, slow;
	int last_serial;
};

static void *racer_run(void *arg)
{
	struct racer *r = arg;
	s3_credentials c;
	s3_error err;

	while (creds_now_ns() < r->until_ns) {
		int64_t t0 = creds_now_ns(), t1;
		int rc = s3_creds_get(r->p, &c, &err);

		t1 = creds_now_ns();
		r->calls++;
		if (t1 - t0 > 200 * 1000000)
			r->slow++;
		if (rc) {
			r->errors++;
			continue;
		}
		if (serial_of(c.secret_key) != serial_of(c.access_key) ||
		    serial_of(c.session_token) != serial_of(c.access_key))
			r->mixed++;
		if ((int64_t)c.expiration * CREDS_NS_PER_S <= t0 - CREDS_NS_PER_S)
			r->stale++;
		r->last_serial = serial_of(c.access_key);
		s3_credentials_clear(&c);
		usleep(500);
	}
	return NULL;
}

/* Eight threads through a refresh that takes 300 ms: exactly one fetch,
 * nobody else waits for it, every set returned whole. */
static void test_imds_threads(void)
{
	struct racer r[8];
	pthread_t t[8];
	s3_credentials c1;
	char errbuf[512];
	s3_cred_provider *p;
	int slow = 0, first;
	long creds;
	s3_error err;

	reset();
	server_control("fail=0&lifetime=4&delay=0.3");
	use_imds();
	p = make(NULL, NULL, NULL, errbuf, sizeof(errbuf));
	CHECK(p != NULL);
	if (!p)
		return;
	CHECK(s3_creds_get(p, &c1, &err) == 0);
	first = serial_of(c1.access_key);
	creds = server_stat("creds_get");
	for (int i = 0; i < 8; i++) {
		r[i] = (struct racer){.p = p};
		/* Past the refresh point, short of the next one. */
		r[i].until_ns = (int64_t)c1.expiration * CREDS_NS_PER_S + 500 * 1000000;
		CHECK(pthread_create(&t[i], NULL, racer_run, &r[i]) == 0);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(t[i], NULL);
		CHECK(r[i].calls > 100);
		CHECK(r[i].errors == 0);
		CHECK(r[i].mixed == 0);
		CHECK(r[i].stale == 0);
		CHECK(r[i].last_serial > first);
		slow += r[i].slow;
	}
	CHECK(server_stat("creds_get") == creds + 1);
	CHECK(slow <= 1);
	server_control("delay=0");
	s3_credentials_clear(&c1);
	s3_creds_free(p);
}

/* ---------------------------------------------------------------- refresh rule */

static void test_refresh_due(void)
{
	s3_cred_provider p = {0};
	const int64_t s = CREDS_NS_PER_S, now = 1000000 * s;

	CHECK(!creds_refresh_due(&p, now)); /* static credentials */
	/* Six hours: due in the last five minutes. */
	p.obtained_ns = now;
	p.expires_ns = now + 6 * 3600 * s;
	CHECK(!creds_refresh_due(&p, p.expires_ns - 301 * s));
	CHECK(creds_refresh_due(&p, p.expires_ns - 299 * s));
	/* Twelve minutes: due in the last quarter, three minutes. */
	p.expires_ns = now + 12 * 60 * s;
	CHECK(!creds_refresh_due(&p, p.expires_ns - 181 * s));
	CHECK(creds_refresh_due(&p, p.expires_ns - 179 * s));
	CHECK(creds_refresh_due(&p, p.expires_ns + s));
}

int main(int argc, char **argv)
{
	char *log;

	if (argc < 2) {
		fprintf(stderr, "usage: %s fake_metadata.py\n", argv[0]);
		return 2;
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	snprintf(tmpdir, sizeof(tmpdir), "%s/bucketfs-creds-XXXXXX",
	         getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 2;
	}
	snprintf(etc_passwd, sizeof(etc_passwd), "%s/etc-passwd-s3fs", tmpdir);
	creds_etc_passwd = etc_passwd;
	creds_retry_ns = 500 * 1000000;
	server_start(argv[1]);

	test_json_fields();
	test_json_rejects();
	test_json_fuzz();
	test_refresh_due();
	test_passwd_lines();
	test_passwd_permissions();
	test_env();
	test_profiles();
	test_region_order();
	test_chain_order();
	test_nothing_found();
	test_ecs();
	test_imds_fetch();
	test_imds_refresh();
	test_imds_refresh_failure();
	test_imds_threads();

	/* Key ids may be logged; secrets and tokens never. */
	log = log_since(0);
	CHECK_HAS(log, "access key id ASIAIMDS");
	CHECK(!strstr(log, "S3CR3T") && !strstr(log, "SKENV") && !strstr(log, "SKOPT"));
	CHECK(!strstr(log, "T0K3N") && !strstr(log, "TKWORK"));
	free(log);

	server_stop();
	reset();
	unlink(tpath("ecs-token"));
	rmdir(tpath(".aws"));
	rmdir(tmpdir);
	curl_global_cleanup();
	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	printf("creds: all checks passed\n");
	return 0;
}
