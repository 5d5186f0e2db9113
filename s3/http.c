/*
 * http.c - the one HTTP layer of s3/: the client object, a pool of libcurl
 * easy handles (each keeps its connections alive, so requests reuse them),
 * SigV4 signing of every attempt, and the retry loop.
 *
 * Why a pool of easy handles rather than one multi handle: FUSE calls us from
 * many threads that each want a blocking answer; a handle taken from the pool
 * is owned by one thread for one request, so the request path holds no lock
 * but the few instructions of a pool push/pop.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "internal.h"

#define POOL_MAX 64
/* Receive buffer of a ranged GET of at least BIG_BODY_MIN bytes into a sink. */
#define BIG_BODY_MIN    (1L << 20)
#define BIG_BODY_BUFFER (256L << 10)
/* The largest XML answer kept in memory.  The biggest legitimate one is a
 * listing page of 1,000 keys of 1,024 bytes, URL-encoded (up to 3 bytes per
 * byte) with owners: under 5 MiB.  Anything bigger is refused at once (not
 * retried), so a broken or hostile server cannot make us buffer without
 * bound. */
#define MAX_COLLECT_BYTES (16u << 20)
#define MAX_ERROR_BYTES   (1u << 20)
#define BACKOFF_BASE_MS   100
#define BACKOFF_CAP_MS    10000

static pthread_once_t global_once = PTHREAD_ONCE_INIT;

static void global_init(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

void s3_log(const s3_client *c, int level, const char *fmt, ...)
{
	va_list ap;

	if (!c || !c->log || level > c->log_level)
		return;
	va_start(ap, fmt);
	c->log(level, fmt, ap);
	va_end(ap);
}

/* ---------------------------------------------------------------- client */

static int parse_endpoint(s3_client *c, const char *endpoint)
{
	const char *p, *host, *host_end, *path;
	char *end;

	p = strstr(endpoint, "://");
	if (!p)
		return -EINVAL;
	c->scheme = strndup(endpoint, (size_t)(p - endpoint));
	if (!c->scheme)
		return -ENOMEM;
	for (char *s = c->scheme; *s; s++)
		*s = (char)tolower((unsigned char)*s);
	if (strcmp(c->scheme, "http") != 0 && strcmp(c->scheme, "https") != 0)
		return -EINVAL;
	host = p + 3;
	path = strchr(host, '/');
	if (!path)
		path = host + strlen(host);
	host_end = path;
	if (*host == '[') { /* IPv6 literal */
		const char *rb = memchr(host, ']', (size_t)(path - host));
		if (!rb)
			return -EINVAL;
		host_end = rb + 1;
	} else {
		const char *colon = memchr(host, ':', (size_t)(path - host));
		if (colon)
			host_end = colon;
	}
	if (host_end == host)
		return -EINVAL;
	c->host = strndup(host, (size_t)(host_end - host));
	if (!c->host)
		return -ENOMEM;
	if (*host_end == ':') {
		long port = strtol(host_end + 1, &end, 10);
		if (end != path || port <= 0 || port > 65535)
			return -EINVAL;
		c->port = (int)port;
	}
	/* Keep a path prefix ("https://host/s3") but drop trailing slashes. */
	size_t plen = strlen(path);
	while (plen > 0 && path[plen - 1] == '/')
		plen--;
	c->base_path = strndup(path, plen);
	return c->base_path ? 0 : -ENOMEM;
}

static int load_sse_c_key(s3_client *c, const char *file, char *errbuf, size_t errlen)
{
	unsigned char raw[128], key[48], md5[EVP_MAX_MD_SIZE];
	unsigned int md5len = 0;
	char b64[96];
	ssize_t n;
	int fd, keylen = -1;

	fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(errbuf, errlen, "cannot open SSE-C key file %s: %s", file,
		         strerror(errno));
		return -1;
	}
	n = read(fd, raw, sizeof(raw) - 1);
	close(fd);
	if (n == 32) {
		memcpy(key, raw, 32);
		keylen = 32;
	} else if (n > 0) {
		/* base64 on the first line */
		raw[n] = '\0';
		char *nl = strpbrk((char *)raw, "\r\n");
		if (nl)
			*nl = '\0';
		size_t l = strlen((char *)raw);
		if (l == 44) {
			int d = EVP_DecodeBlock(key, raw, (int)l);
			if (d == 33) /* 32 bytes plus one '=' pad */
				keylen = 32;
		}
	}
	if (keylen != 32) {
		snprintf(errbuf, errlen,
		         "SSE-C key file %s must hold a 32-byte key (raw, or base64 on one line)",
		         file);
		return -1;
	}
	EVP_EncodeBlock((unsigned char *)b64, key, 32);
	c->sse_c_key_b64 = strdup(b64);
	EVP_Digest(key, 32, md5, &md5len, EVP_md5(), NULL);
	EVP_EncodeBlock((unsigned char *)b64, md5, (int)md5len);
	c->sse_c_key_md5_b64 = strdup(b64);
	memset(key, 0, sizeof(key));
	memset(raw, 0, sizeof(raw));
	memset(b64, 0, sizeof(b64));
	if (!c->sse_c_key_b64 || !c->sse_c_key_md5_b64) {
		snprintf(errbuf, errlen, "out of memory");
		return -1;
	}
	return 0;
}

s3_client *s3_client_new(const s3_config *cfg, char *errbuf, size_t errlen)
{
	s3_client *c;
	char ep[512];

	pthread_once(&global_once, global_init);
	if (!cfg->bucket || !*cfg->bucket) {
		snprintf(errbuf, errlen, "no bucket given");
		return NULL;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&c->pool_lock, NULL);
	c->log = cfg->log;
	c->log_level = cfg->log_level;
	c->bucket = strdup(cfg->bucket);
	c->path_style = cfg->path_style;
	c->connect_timeout_s = cfg->connect_timeout_s > 0 ? cfg->connect_timeout_s : 10;
	c->readwrite_timeout_s = cfg->readwrite_timeout_s > 0 ? cfg->readwrite_timeout_s : 60;
	c->retries = cfg->retries >= 0 ? cfg->retries : 5;
	c->retry_max_seconds = cfg->retry_max_seconds > 0 ? cfg->retry_max_seconds : 120;
	c->sse = cfg->sse;
	if (cfg->ca_bundle)
		c->ca_bundle = strdup(cfg->ca_bundle);
	if (cfg->sse_kms_key_id)
		c->sse_kms_key_id = strdup(cfg->sse_kms_key_id);
	if (!c->bucket) {
		snprintf(errbuf, errlen, "out of memory");
		goto fail;
	}
	if (cfg->sse == S3_SSE_C) {
		if (!cfg->sse_c_key_file) {
			snprintf(errbuf, errlen, "SSE-C needs a key file");
			goto fail;
		}
		if (load_sse_c_key(c, cfg->sse_c_key_file, errbuf, errlen))
			goto fail;
	}

	s3_cred_options co = {
	        .passwd_file = cfg->passwd_file,
	        .profile = cfg->profile,
	        .bucket = cfg->bucket,
	        .log = cfg->log,
	        .log_level = cfg->log_level,
	};
	c->creds = s3_creds_new(&co, errbuf, errlen);
	if (!c->creds)
		goto fail;

	if (cfg->region && *cfg->region)
		c->region = strdup(cfg->region);
	else
		c->region = s3_creds_region(c->creds);
	if (!c->region)
		c->region = strdup("us-east-1");

	if (cfg->endpoint && *cfg->endpoint) {
		snprintf(ep, sizeof(ep), "%s", cfg->endpoint);
	} else if (strcmp(c->region, "us-east-1") == 0) {
		snprintf(ep, sizeof(ep), "https://s3.amazonaws.com");
	} else {
		snprintf(ep, sizeof(ep), "https://s3.%s.amazonaws.com", c->region);
	}
	if (!strstr(ep, "://")) { /* s3fs accepts a bare host name as url */
		char tmp[sizeof(ep)];
		memcpy(tmp, ep, sizeof(tmp));
		snprintf(ep, sizeof(ep), "https://%.500s", tmp);
	}
	if (parse_endpoint(c, ep)) {
		snprintf(errbuf, errlen,
		         "bad endpoint URL '%s' (want http[s]://host[:port][/path])", ep);
		goto fail;
	}
	/* A dotted bucket name does not match the wildcard certificate of a
	 * virtual host; S3 itself recommends path style for those. */
	if (!c->path_style && strchr(c->bucket, '.') && strcmp(c->scheme, "https") == 0) {
		s3_log(c, S3_LOG_INFO, "bucket name contains '.', using path-style requests");
		c->path_style = true;
	}
	s3_log(c, S3_LOG_INFO,
	       "s3: endpoint %s://%s:%d bucket %s region %s (%s), credentials from %s", c->scheme,
	       c->host, c->port ? c->port : (strcmp(c->scheme, "https") ? 80 : 443), c->bucket,
	       c->region, c->path_style ? "path-style" : "virtual-hosted",
	       s3_creds_source(c->creds));
	return c;
fail:
	s3_client_free(c);
	return NULL;
}

void s3_client_free(s3_client *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->pool_n; i++)
		curl_easy_cleanup(c->pool[i]);
	free(c->pool);
	pthread_mutex_destroy(&c->pool_lock);
	if (c->creds)
		s3_creds_free(c->creds);
	if (c->sse_c_key_b64)
		memset(c->sse_c_key_b64, 0, strlen(c->sse_c_key_b64));
	free(c->sse_c_key_b64);
	free(c->sse_c_key_md5_b64);
	free(c->sse_kms_key_id);
	free(c->bucket);
	free(c->scheme);
	free(c->host);
	free(c->base_path);
	free(c->region);
	free(c->ca_bundle);
	free(c);
}

const char *s3_client_region(const s3_client *c)
{
	return c->region;
}

const char *s3_client_cred_source(const s3_client *c)
{
	return s3_creds_source(c->creds);
}

void s3_client_stats(const s3_client *c, s3_stats *out)
{
	for (int i = 0; i < S3_REQ__COUNT; i++)
		out->requests[i] = __atomic_load_n(&c->stats_requests[i], __ATOMIC_RELAXED);
	out->retries = __atomic_load_n(&c->stats_retries, __ATOMIC_RELAXED);
	out->errors = __atomic_load_n(&c->stats_errors, __ATOMIC_RELAXED);
	out->bytes_down = __atomic_load_n(&c->stats_bytes_down, __ATOMIC_RELAXED);
	out->bytes_up = __atomic_load_n(&c->stats_bytes_up, __ATOMIC_RELAXED);
}

const char *s3_req_type_name(enum s3_req_type t)
{
	static const char *const names[S3_REQ__COUNT] = {
	        "LIST", "HEAD", "GET", "PUT", "COPY", "DELETE", "MULTIPART", "OTHER",
	};
	return (unsigned)t < S3_REQ__COUNT ? names[t] : "?";
}

static CURL *pool_get(s3_client *c)
{
	CURL *h = NULL;

	pthread_mutex_lock(&c->pool_lock);
	if (c->pool_n)
		h = c->pool[--c->pool_n];
	pthread_mutex_unlock(&c->pool_lock);
	if (!h)
		h = curl_easy_init();
	else
		curl_easy_reset(h); /* options go, live connections stay */
	return h;
}

static void pool_put(s3_client *c, CURL *h, bool broken)
{
	if (!broken) {
		pthread_mutex_lock(&c->pool_lock);
		if (c->pool_n == c->pool_cap && c->pool_cap < POOL_MAX) {
			size_t cap = c->pool_cap ? c->pool_cap * 2 : 8;
			CURL **p = realloc(c->pool, cap * sizeof(*p));
			if (p) {
				c->pool = p;
				c->pool_cap = cap;
			}
		}
		if (c->pool_n < c->pool_cap) {
			c->pool[c->pool_n++] = h;
			h = NULL;
		}
		pthread_mutex_unlock(&c->pool_lock);
	}
	if (h)
		curl_easy_cleanup(h);
}

/* ---------------------------------------------------------------- request */

void s3_http_req_init(s3_http_req *rq, enum s3_req_type type, const char *method, const char *key)
{
	memset(rq, 0, sizeof(*rq));
	rq->type = type;
	rq->method = method;
	rq->key = key;
	rq->body_fd = -1;
}

int s3_http_add_query(s3_http_req *rq, const char *name, const char *value)
{
	if (rq->n_query >= S3_HTTP_MAX_QUERY)
		return -E2BIG;
	rq->query[rq->n_query].name = name;
	rq->query[rq->n_query].value = value;
	rq->n_query++;
	return 0;
}

int s3_http_add_header(s3_http_req *rq, const char *name, const char *value)
{
	if (rq->n_headers >= S3_HTTP_MAX_HEADERS)
		return -E2BIG;
	rq->headers[rq->n_headers].name = name;
	rq->headers[rq->n_headers].value = value;
	rq->n_headers++;
	return 0;
}

void s3_http_resp_clear(s3_http_resp *rs)
{
	free(rs->body);
	s3_head_clear(&rs->head);
	memset(rs, 0, sizeof(*rs));
}

bool s3_http_code_is_transient(const char *code)
{
	static const char *const transient[] = {
	        "SlowDown",
	        "InternalError",
	        "RequestTimeout",
	        "ServiceUnavailable",
	        "Throttling",
	        "ThrottlingException",
	        "RequestTimeTooSkewed",
	        "OperationAborted",
	        "RequestThrottled",
	};
	for (size_t i = 0; i < sizeof(transient) / sizeof(transient[0]); i++)
		if (strcmp(code, transient[i]) == 0)
			return true;
	return false;
}

/* State of one attempt, shared with the curl callbacks. */
struct attempt {
	s3_client *c;
	s3_http_req *rq;
	s3_http_resp *rs;
	long status;          /* of the last status line seen */
	uint64_t sent;        /* request body bytes handed to curl */
	uint64_t delivered;   /* response body bytes handed to the sink */
	uint64_t sink_offset; /* object offset of the first byte of this attempt */
	int sink_error;       /* the sink's -errno, if it aborted */
	bool collect;         /* body goes to rs->body */
	size_t collect_cap;
	bool overflow;
	bool headers_done; /* the blank line after the final response's headers */
	int read_errno;
	bool wrong_version; /* a GET answered with another ETag than If-Match named */
};

static bool status_ok(long status)
{
	return status >= 200 && status < 300;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *ud)
{
	struct attempt *a = ud;
	size_t len = size * nitems, nlen;
	char line[8192], *colon, *v, *e;

	if (len >= sizeof(line))
		return len; /* a header this long is nothing we read */
	memcpy(line, buf, len);
	line[len] = '\0';
	while (len && (line[len - 1] == '\r' || line[len - 1] == '\n'))
		line[--len] = '\0';
	if (len == 0) {
		/* End of a header block; 1xx blocks are followed by another. */
		if (a->status >= 200)
			a->headers_done = true;
		return size * nitems;
	}
	if (strncmp(line, "HTTP/", 5) == 0) {
		/* A new response (after 100 Continue): forget the old headers. */
		char *sp = strchr(line, ' ');
		a->headers_done = false;
		a->status = sp ? strtol(sp + 1, NULL, 10) : 0;
		s3_head_clear(&a->rs->head);
		return size * nitems;
	}
	colon = strchr(line, ':');
	if (!colon)
		return size * nitems;
	*colon = '\0';
	nlen = (size_t)(colon - line);
	v = colon + 1;
	while (*v == ' ' || *v == '\t')
		v++;
	e = v + strlen(v);
	while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
		*--e = '\0';
	s3_head *h = &a->rs->head;
	if (strcasecmp(line, "etag") == 0) {
		if (v[0] == '"')
			snprintf(h->etag, sizeof(h->etag), "%s", v);
		else
			snprintf(h->etag, sizeof(h->etag), "\"%s\"", v);
	} else if (strcasecmp(line, "content-length") == 0) {
		if (!h->size) /* Content-Range, when present, knows better */
			h->size = strtoull(v, NULL, 10);
	} else if (strcasecmp(line, "content-range") == 0) {
		char *slash = strrchr(v, '/');
		if (slash && slash[1] != '*')
			h->size = strtoull(slash + 1, NULL, 10);
	} else if (strcasecmp(line, "last-modified") == 0) {
		int64_t t = s3_parse_http_date(v);
		if (t >= 0)
			h->last_modified_ns = t;
	} else if (strcasecmp(line, "content-type") == 0) {
		free(h->content_type);
		h->content_type = strdup(v);
	} else if (nlen > 11 && strncasecmp(line, "x-amz-meta-", 11) == 0) {
		if (s3_meta_set(&h->meta, line + 11, v))
			return 0; /* ENOMEM: abort the transfer */
	} else if (strcasecmp(line, "x-amz-request-id") == 0 ||
	           (strcasecmp(line, "x-trans-id") == 0 && !a->rs->request_id[0])) {
		snprintf(a->rs->request_id, sizeof(a->rs->request_id), "%s", v);
	}
	return size * nitems;
}

/* Two spellings of one ETag: quotes, a weak prefix and hex case aside. */
static bool etag_same(const char *a, const char *b)
{
	size_t la, lb;

	if (strncmp(a, "W/", 2) == 0)
		a += 2;
	if (strncmp(b, "W/", 2) == 0)
		b += 2;
	if (*a == '"')
		a++;
	if (*b == '"')
		b++;
	la = strcspn(a, "\"");
	lb = strcspn(b, "\"");
	return la == lb && strncasecmp(a, b, la) == 0;
}

static size_t on_body(char *buf, size_t size, size_t nmemb, void *ud)
{
	struct attempt *a = ud;
	size_t len = size * nmemb;

	__atomic_fetch_add(&a->c->stats_bytes_down, len, __ATOMIC_RELAXED);
	/* A server that ignores If-Match (s3rver does) answers with whatever
	 * version it has now: refuse it before a byte of it reaches the sink,
	 * as if it had answered 412. */
	if (a->rq->sink && status_ok(a->status) && a->rq->if_match && a->rs->head.etag[0] &&
	    !etag_same(a->rs->head.etag, a->rq->if_match)) {
		a->wrong_version = true;
		return 0;
	}
	if (a->rq->sink && status_ok(a->status)) {
		int r = a->rq->sink(a->rq->sink_ctx, a->sink_offset + a->delivered, buf, len);
		if (r) {
			a->sink_error = r;
			return 0;
		}
		a->delivered += len;
		return len;
	}
	/* Collect: a listing / result document, or the error body of a GET. */
	size_t limit = a->rq->sink ? MAX_ERROR_BYTES : MAX_COLLECT_BYTES;
	s3_http_resp *rs = a->rs;
	if (rs->body_len + len > limit) {
		a->overflow = true;
		return 0;
	}
	if (rs->body_len + len + 1 > a->collect_cap) {
		size_t cap = a->collect_cap ? a->collect_cap : 16384;
		while (cap < rs->body_len + len + 1)
			cap *= 2;
		if (cap > (size_t)limit + 1)
			cap = (size_t)limit + 1; /* never more than the limit */
		char *p = realloc(rs->body, cap);
		if (!p)
			return 0;
		rs->body = p;
		a->collect_cap = cap;
	}
	memcpy(rs->body + rs->body_len, buf, len);
	rs->body_len += len;
	rs->body[rs->body_len] = '\0';
	return len;
}

static size_t on_read(char *buf, size_t size, size_t nitems, void *ud)
{
	struct attempt *a = ud;
	s3_http_req *rq = a->rq;
	uint64_t left = rq->body_len - a->sent;
	size_t want = size * nitems;
	ssize_t n;

	if (want > left)
		want = (size_t)left;
	if (!want)
		return 0;
	if (rq->body_fd >= 0) {
		n = pread(rq->body_fd, buf, want, (off_t)(rq->body_fd_off + a->sent));
		if (n < 0) {
			a->read_errno = errno;
			return CURL_READFUNC_ABORT;
		}
		if (n == 0) { /* the file shrank under us */
			a->read_errno = EIO;
			return CURL_READFUNC_ABORT;
		}
	} else {
		memcpy(buf, (const char *)rq->body + a->sent, want);
		n = (ssize_t)want;
	}
	a->sent += (uint64_t)n;
	__atomic_fetch_add(&a->c->stats_bytes_up, (uint64_t)n, __ATOMIC_RELAXED);
	return (size_t)n;
}

static int on_seek(void *ud, curl_off_t offset, int origin)
{
	struct attempt *a = ud;

	if (origin != SEEK_SET || offset < 0 || (uint64_t)offset > a->rq->body_len)
		return CURL_SEEKFUNC_FAIL;
	a->sent = (uint64_t)offset;
	return CURL_SEEKFUNC_OK;
}

/* SHA-256 of the request body, streamed from the fd when there is one; with
 * md5 non-NULL its MD5 (16 bytes) too, from the same reads. */
static int payload_hash(const s3_http_req *rq, char out[65], unsigned char *md5)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE], *buf;
	unsigned int mdlen = 0;
	EVP_MD_CTX *ctx, *mctx = NULL;
	uint64_t done = 0;
	int r = 0;

	if (rq->body_fd < 0) {
		const void *b = rq->body ? rq->body : "";
		s3_sha256_hex(b, (size_t)rq->body_len, out);
		if (md5)
			EVP_Digest(b, (size_t)rq->body_len, md5, &mdlen, EVP_md5(), NULL);
		return 0;
	}
	ctx = EVP_MD_CTX_new();
	if (md5)
		mctx = EVP_MD_CTX_new();
	buf = malloc(1 << 20);
	if (!ctx || !buf || (md5 && !mctx)) {
		r = -ENOMEM;
		goto out;
	}
	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	if (mctx)
		EVP_DigestInit_ex(mctx, EVP_md5(), NULL);
	while (done < rq->body_len) {
		size_t want =
		        rq->body_len - done > (1 << 20) ? (1 << 20) : (size_t)(rq->body_len - done);
		ssize_t n = pread(rq->body_fd, buf, want, (off_t)(rq->body_fd_off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			r = n < 0 ? -errno : -EIO;
			goto out;
		}
		EVP_DigestUpdate(ctx, buf, (size_t)n);
		if (mctx)
			EVP_DigestUpdate(mctx, buf, (size_t)n);
		done += (uint64_t)n;
	}
	if (mctx)
		EVP_DigestFinal_ex(mctx, md5, &mdlen);
	EVP_DigestFinal_ex(ctx, md, &mdlen);
	for (unsigned i = 0; i < mdlen; i++) {
		out[2 * i] = hex[md[i] >> 4];
		out[2 * i + 1] = hex[md[i] & 15];
	}
	out[64] = '\0';
out:
	EVP_MD_CTX_free(ctx);
	EVP_MD_CTX_free(mctx);
	free(buf);
	return r;
}

/* Whether an ETag ("\"hex\"" or hex) has the form of an MD5: 32 hex digits. */
static bool etag_is_md5(const char *etag)
{
	const char *t = etag + (etag[0] == '"');
	size_t n = 0;

	while (isxdigit((unsigned char)t[n]))
		n++;
	return n == 32 && (t[n] == '\0' || (t[n] == '"' && t[n + 1] == '\0'));
}

static void amz_now(char date[17])
{
	time_t now = time(NULL);
	struct tm tm;

	gmtime_r(&now, &tm);
	strftime(date, 17, "%Y%m%dT%H%M%SZ", &tm);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Full jitter: a random delay in [0, min(cap, base * 2^attempt)]. */
static long backoff_ms(int attempt)
{
	unsigned int rnd = 0;
	long ceil_ms = BACKOFF_BASE_MS;

	for (int i = 0; i < attempt && ceil_ms < BACKOFF_CAP_MS; i++)
		ceil_ms *= 2;
	if (ceil_ms > BACKOFF_CAP_MS)
		ceil_ms = BACKOFF_CAP_MS;
	if (getrandom(&rnd, sizeof(rnd), GRND_NONBLOCK) != sizeof(rnd))
		rnd = (unsigned int)rand();
	return ceil_ms / 4 + (long)(rnd % (unsigned)(ceil_ms - ceil_ms / 4 + 1));
}

static bool curl_code_is_transient(CURLcode cc)
{
	switch (cc) {
	case CURLE_COULDNT_CONNECT:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_PARTIAL_FILE:
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_READ_ERROR:
		return true;
	default:
		return false;
	}
}

/* Builds "scheme://host[:port]" + path + "?" + query and the Host value. */
static int build_target(const s3_client *c, const s3_http_req *rq, char **path_out, char *host,
                        size_t hostlen)
{
	size_t klen = rq->key ? strlen(rq->key) : 0;
	size_t len = strlen(c->base_path) + strlen(c->bucket) + klen + 4;
	char *path = malloc(len);

	if (!path)
		return -ENOMEM;
	if (c->path_style) {
		snprintf(path, len, "%s/%s%s%s", c->base_path, c->bucket, rq->key ? "/" : "",
		         rq->key ? rq->key : "");
		if (c->port)
			snprintf(host, hostlen, "%s:%d", c->host, c->port);
		else
			snprintf(host, hostlen, "%s", c->host);
	} else {
		snprintf(path, len, "%s/%s", c->base_path, rq->key ? rq->key : "");
		if (c->port)
			snprintf(host, hostlen, "%s.%s:%d", c->bucket, c->host, c->port);
		else
			snprintf(host, hostlen, "%s.%s", c->bucket, c->host);
	}
	*path_out = path;
	return 0;
}

static void fill_error_from_response(s3_client *c, const s3_http_req *rq, s3_http_resp *rs,
                                     s3_error *err)
{
	err->http_status = (int)rs->status;
	if (rs->body && rs->body_len && s3_xml_parse_error(rs->body, rs->body_len, err) == 0)
		; /* code, message, request id from the document */
	else if (rs->status == 404 && !err->code[0])
		snprintf(err->code, sizeof(err->code), "%s",
		         rq->key ? "NoSuchKey" : "NoSuchBucket");
	if (!err->request_id[0])
		snprintf(err->request_id, sizeof(err->request_id), "%s", rs->request_id);
	if (!err->message[0]) {
		if (rs->status == 403)
			snprintf(err->message, sizeof(err->message), "Forbidden");
		else if (rs->status == 404)
			snprintf(err->message, sizeof(err->message), "Not Found");
	}
}

static struct curl_slist *add_hdr(struct curl_slist *l, const char *name, const char *value,
                                  bool *oom)
{
	char buf[4096];
	struct curl_slist *n;

	if (value && *value)
		snprintf(buf, sizeof(buf), "%s: %s", name, value);
	else
		snprintf(buf, sizeof(buf), "%s;", name); /* curl's way to send an empty header */
	n = curl_slist_append(l, buf);
	if (!n) {
		*oom = true;
		return l;
	}
	return n;
}

static int perform_once(s3_client *c, CURL *h, s3_http_req *rq, s3_http_resp *rs, struct attempt *a,
                        const char *phash, const char *md5_b64, s3_error *err, CURLcode *ccout)
{
	s3_credentials cr = {0};
	s3_sigv4_output so = {0};
	s3_kv hdrs[S3_HTTP_MAX_HEADERS + 8];
	size_t nh = 0;
	char host[600], date[17], range[64], *path = NULL, *url = NULL, errbuf[CURL_ERROR_SIZE];
	struct curl_slist *sl = NULL;
	bool oom = false;
	int r;

	r = s3_creds_get(c->creds, &cr, err);
	if (r)
		return r;
	r = build_target(c, rq, &path, host, sizeof(host));
	if (r)
		goto out;

	for (size_t i = 0; i < rq->n_headers; i++)
		hdrs[nh++] = rq->headers[i];
	if (rq->has_range) {
		uint64_t start = a->sink_offset;
		if (rq->range_len)
			snprintf(range, sizeof(range), "bytes=%" PRIu64 "-%" PRIu64, start,
			         rq->range_off + rq->range_len - 1);
		else
			snprintf(range, sizeof(range), "bytes=%" PRIu64 "-", start);
		hdrs[nh++] = (s3_kv){"range", range};
	}
	if (rq->if_match)
		hdrs[nh++] = (s3_kv){"if-match", rq->if_match};
	if (md5_b64)
		hdrs[nh++] = (s3_kv){"content-md5", md5_b64};
	if (rq->sse_c && c->sse_c_key_b64) {
		hdrs[nh++] = (s3_kv){"x-amz-server-side-encryption-customer-algorithm", "AES256"};
		hdrs[nh++] = (s3_kv){"x-amz-server-side-encryption-customer-key", c->sse_c_key_b64};
		hdrs[nh++] = (s3_kv){"x-amz-server-side-encryption-customer-key-md5",
		                     c->sse_c_key_md5_b64};
	}
	if (rq->sse_c_copy_source && c->sse_c_key_b64) {
		hdrs[nh++] = (s3_kv){"x-amz-copy-source-server-side-encryption-customer-algorithm",
		                     "AES256"};
		hdrs[nh++] = (s3_kv){"x-amz-copy-source-server-side-encryption-customer-key",
		                     c->sse_c_key_b64};
		hdrs[nh++] = (s3_kv){"x-amz-copy-source-server-side-encryption-customer-key-md5",
		                     c->sse_c_key_md5_b64};
	}

	amz_now(date);
	s3_sigv4_input si = {
	        .method = rq->method,
	        .host = host,
	        .path = path,
	        .query = rq->query,
	        .n_query = rq->n_query,
	        .headers = hdrs,
	        .n_headers = nh,
	        .payload_hash = phash,
	        .amz_date = date,
	        .region = c->region,
	        .service = "s3",
	        .access_key = cr.access_key,
	        .secret_key = cr.secret_key,
	        .session_token = cr.session_token,
	};
	r = s3_sigv4_sign(&si, &so);
	if (r)
		goto out;

	size_t ulen =
	        strlen(c->scheme) + strlen(host) + strlen(so.url_path) + strlen(so.url_query) + 8;
	url = malloc(ulen);
	if (!url) {
		r = -ENOMEM;
		goto out;
	}
	/* Connect to the endpoint host; the virtual host name goes in Host. */
	if (c->port)
		snprintf(url, ulen, "%s://%s%s%s:%d%s%s%s", c->scheme,
		         c->path_style ? "" : c->bucket, c->path_style ? "" : ".", c->host, c->port,
		         so.url_path, so.url_query[0] ? "?" : "", so.url_query);
	else
		snprintf(url, ulen, "%s://%s%s%s%s%s%s", c->scheme, c->path_style ? "" : c->bucket,
		         c->path_style ? "" : ".", c->host, so.url_path, so.url_query[0] ? "?" : "",
		         so.url_query);

	for (size_t i = 0; i < nh; i++)
		sl = add_hdr(sl, hdrs[i].name, hdrs[i].value, &oom);
	sl = add_hdr(sl, "Host", host, &oom);
	sl = add_hdr(sl, "x-amz-date", date, &oom);
	sl = add_hdr(sl, "x-amz-content-sha256", phash, &oom);
	if (cr.session_token && *cr.session_token)
		sl = add_hdr(sl, "x-amz-security-token", cr.session_token, &oom);
	sl = add_hdr(sl, "Authorization", so.authorization, &oom);
	{
		/* No "Expect: 100-continue" round trip, no default Accept. */
		struct curl_slist *n = curl_slist_append(sl, "Expect:");
		if (n)
			sl = n;
		else
			oom = true;
		n = curl_slist_append(sl, "Accept:");
		if (n)
			sl = n;
		else
			oom = true;
		if (strcmp(rq->method, "PUT") == 0 || strcmp(rq->method, "POST") == 0) {
			n = curl_slist_append(sl, "Transfer-Encoding:");
			if (n)
				sl = n;
			else
				oom = true;
		}
	}
	if (oom) {
		r = -ENOMEM;
		goto out;
	}

	errbuf[0] = '\0';
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, sl);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, c->connect_timeout_s);
	/* A stall (no byte for readwrite_timeout) aborts; a slow but moving
	 * transfer of a large object does not. */
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, c->readwrite_timeout_s);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, a);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, a);
	curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	if (c->ca_bundle)
		curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_bundle);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "bucketfs/" BUCKETFS_VERSION);
	if (strcmp(rq->method, "HEAD") == 0) {
		curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
	} else if (strcmp(rq->method, "GET") == 0) {
		curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
		/* A large range streamed to a sink (the cache's fetches): read
		 * it in larger pieces than libcurl's 16 KiB, a recv and a sink
		 * write (a pwrite into the cache) per piece.  Only for those:
		 * a handle keeps its buffer in the pool, and the many small
		 * GETs of a walk (whole objects, no range) keep small ones. */
		if (rq->sink && rq->has_range && rq->range_len >= BIG_BODY_MIN)
			curl_easy_setopt(h, CURLOPT_BUFFERSIZE, BIG_BODY_BUFFER);
	} else if (strcmp(rq->method, "PUT") == 0 || strcmp(rq->method, "POST") == 0) {
		if (strcmp(rq->method, "PUT") == 0)
			curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
		else
			curl_easy_setopt(h, CURLOPT_POST, 1L);
		curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
		curl_easy_setopt(h, CURLOPT_READDATA, a);
		curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, on_seek);
		curl_easy_setopt(h, CURLOPT_SEEKDATA, a);
		if (strcmp(rq->method, "PUT") == 0)
			curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)rq->body_len);
		else
			curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->body_len);
	} else {
		curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, rq->method);
	}

	__atomic_fetch_add(&c->stats_requests[rq->type], 1, __ATOMIC_RELAXED);
	*ccout = curl_easy_perform(h);
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &rs->status);
	/* A connection closed inside the headers can look like a complete
	 * (HTTP/1.0-style) response to curl: the ETag may be missing. */
	if (*ccout == CURLE_OK && !a->headers_done)
		*ccout = CURLE_PARTIAL_FILE;
	if (*ccout != CURLE_OK) {
		err->curl_code = (int)*ccout;
		err->http_status = 0;
		if (a->read_errno)
			err->sys_errno = a->read_errno;
		else if (a->sink_error)
			err->sys_errno = -a->sink_error;
		snprintf(err->message, sizeof(err->message), "%s",
		         errbuf[0] ? errbuf : curl_easy_strerror(*ccout));
		if (a->overflow) {
			err->sys_errno = EIO;
			snprintf(err->message, sizeof(err->message),
			         "answer refused: its body is larger than %u MiB (the limit for "
			         "an XML document)",
			         MAX_COLLECT_BYTES >> 20);
		}
		r = -s3_error_errno(err);
		if (!r)
			r = -EIO;
		if (a->wrong_version) {
			err->curl_code = 0;
			err->http_status = 412;
			snprintf(err->code, sizeof(err->code), "PreconditionFailed");
			snprintf(err->message, sizeof(err->message),
			         "the server answered version %s, not %s (If-Match ignored)",
			         rs->head.etag, rq->if_match);
			r = -ESTALE;
		}
	} else if (!status_ok(rs->status)) {
		fill_error_from_response(c, rq, rs, err);
		r = -s3_error_errno(err);
		if (!r)
			r = -EIO;
	}
out:
	curl_slist_free_all(sl);
	free(url);
	free(path);
	s3_sigv4_output_clear(&so);
	s3_credentials_clear(&cr);
	return r;
}

int s3_http_perform(s3_client *c, s3_http_req *rq, s3_http_resp *rs, s3_error *err_out)
{
	s3_error scratch, *err = err_out ? err_out : &scratch;
	char phash[65], md5_b64[32], md5_hex[33];
	unsigned char md5[16];
	double start = now_s();
	char ifmatch_resume[S3_ETAG_MAX] = "";
	const char *orig_if_match = rq->if_match;
	bool orig_has_range = rq->has_range;
	uint64_t delivered_total = 0;
	int r, attempt;

	memset(rs, 0, sizeof(*rs));
	r = payload_hash(rq, phash, rq->content_md5 ? md5 : NULL);
	if (!r && rq->content_md5) {
		EVP_EncodeBlock((unsigned char *)md5_b64, md5, 16);
		for (int i = 0; i < 16; i++)
			snprintf(md5_hex + 2 * i, 3, "%02x", md5[i]);
	}
	if (r) {
		memset(err, 0, sizeof(*err));
		err->sys_errno = -r;
		snprintf(err->message, sizeof(err->message), "reading the request body: %s",
		         strerror(-r));
		return r;
	}
	for (attempt = 0;; attempt++) {
		struct attempt a = {.c = c, .rq = rq, .rs = rs};
		CURLcode cc = CURLE_OK;
		bool transient;

		memset(err, 0, sizeof(*err));
		s3_http_resp_clear(rs);
		/* A GET that broke off resumes after the bytes already delivered,
		 * pinned to the same object version. */
		a.sink_offset = rq->range_off + delivered_total;
		if (delivered_total) {
			rq->has_range = true;
			if (!rq->if_match && ifmatch_resume[0])
				rq->if_match = ifmatch_resume;
		}
		CURL *h = pool_get(c);
		if (!h) {
			err->sys_errno = ENOMEM;
			r = -ENOMEM;
			break;
		}
		r = perform_once(c, h, rq, rs, &a, phash, rq->content_md5 ? md5_b64 : NULL, err,
		                 &cc);
		pool_put(c, h, cc != CURLE_OK);
		delivered_total += a.delivered;
		if (a.delivered && !ifmatch_resume[0] && rs->head.etag[0])
			snprintf(ifmatch_resume, sizeof(ifmatch_resume), "%s", rs->head.etag);
		bool bad_answer = false;
		if (r == 0 && rq->content_md5 && c->sse != S3_SSE_KMS && c->sse != S3_SSE_C &&
		    etag_is_md5(rs->head.etag) &&
		    strncasecmp(rs->head.etag + (rs->head.etag[0] == '"'), md5_hex, 32) != 0) {
			/* The bytes arrived intact (Content-MD5), but the answer
			 * names another version: believe neither. */
			err->http_status = (int)rs->status;
			err->sys_errno = EIO;
			snprintf(err->message, sizeof(err->message),
			         "the answer's ETag %.40s is not the MD5 \"%s\" of the bytes sent",
			         rs->head.etag, md5_hex);
			snprintf(err->request_id, sizeof(err->request_id), "%s", rs->request_id);
			r = -EIO;
			bad_answer = true;
		} else if (r == 0 && rq->parse) {
			r = rq->parse(rq->parse_ctx, rs->body ? rs->body : "", rs->body_len, err);
			if (r == -EPROTO) {
				err->http_status = (int)rs->status;
				err->sys_errno = EPROTO;
				snprintf(err->message, sizeof(err->message),
				         "malformed XML in a %ld answer (%zu bytes)", rs->status,
				         rs->body_len);
				snprintf(err->request_id, sizeof(err->request_id), "%s",
				         rs->request_id);
			} else if (r && !err->http_status) {
				err->http_status = (int)rs->status;
			}
			bad_answer = r == -EPROTO ||
			             (r && err->code[0] && s3_http_code_is_transient(err->code));
		}
		if (r == 0)
			break;
		if (bad_answer)
			transient = true;
		else if (cc != CURLE_OK)
			transient = curl_code_is_transient(cc) && !a.sink_error && !a.read_errno &&
			            !a.overflow && !a.wrong_version;
		else
			transient = rs->status == 500 || rs->status == 502 || rs->status == 503 ||
			            rs->status == 504 || rs->status == 429 ||
			            (err->code[0] && s3_http_code_is_transient(err->code));
		if (!transient || attempt >= c->retries)
			break;
		long ms = backoff_ms(attempt);
		if (now_s() - start + ms / 1000.0 > c->retry_max_seconds)
			break;
		char desc[400];
		s3_error_format(err, desc, sizeof(desc));
		s3_log(c, S3_LOG_WARNING, "s3: %s %s failed (%s), retry %d/%d in %ld ms",
		       rq->method, rq->key ? rq->key : "/", desc, attempt + 1, c->retries, ms);
		__atomic_fetch_add(&c->stats_retries, 1, __ATOMIC_RELAXED);
		struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
		nanosleep(&ts, NULL);
	}
	rq->if_match = orig_if_match;
	rq->has_range = orig_has_range;
	if (r) {
		__atomic_fetch_add(&c->stats_errors, 1, __ATOMIC_RELAXED);
		if (c->log_level >= S3_LOG_DEBUG || (rs->status != 404 && rs->status != 412)) {
			char desc[400];
			s3_error_format(err, desc, sizeof(desc));
			s3_log(c, rs->status == 404 ? S3_LOG_DEBUG : S3_LOG_INFO, "s3: %s %s: %s",
			       rq->method, rq->key ? rq->key : "/", desc);
		}
	} else {
		s3_log(c, S3_LOG_DEBUG, "s3: %s %s -> %ld", rq->method, rq->key ? rq->key : "/",
		       rs->status);
	}
	return r;
}
