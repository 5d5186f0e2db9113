/*
 * internal.h - interfaces between the files of s3/ (and their unit tests).
 * Not part of the public API: nothing outside s3/ and tests/ includes it.
 *
 *   sigv4.c  AWS Signature Version 4 (header signing), URI encoding
 *   creds.c  the credential chain and region discovery
 *   xml.c    parsing and building of S3's XML documents (libxml2)
 *   http.c   the libcurl layer: handle pool, retries, the request loop
 *   ops.c    the S3 operations of s3.h on top of http.c
 *   util.c   s3_error -> errno, formatting, metadata, time, URI encoding
 */
#ifndef BUCKETFS_S3_INTERNAL_H
#define BUCKETFS_S3_INTERNAL_H

#include "s3.h"

/* ---------------------------------------------------------------- sigv4 */

typedef struct s3_kv {
	const char *name;
	const char *value;
} s3_kv;

typedef struct s3_sigv4_input {
	const char *method; /* "GET" */
	const char *host;   /* Host header value, ":port" included if not default */
	const char *path;   /* decoded path, "/bucket/my key.txt" or "/my key.txt" */
	const s3_kv *query; /* decoded query parameters; value NULL or "" = empty */
	size_t n_query;
	const s3_kv *headers; /* further headers to sign, any case/order */
	size_t n_headers;
	const char *payload_hash; /* lower-case hex SHA-256, or "UNSIGNED-PAYLOAD" */
	const char *amz_date;     /* "20130524T000000Z" */
	const char *region;       /* "us-east-1" */
	const char *service;      /* "s3" */
	const char *access_key;
	const char *secret_key;
	const char *session_token; /* NULL or "" when none */
} s3_sigv4_input;

typedef struct s3_sigv4_output {
	char *canonical_request; /* malloc'd */
	char *string_to_sign;    /* malloc'd */
	char *signed_headers;    /* "host;range;x-amz-content-sha256;x-amz-date" */
	char signature[65];
	char *authorization; /* the full Authorization header value */
	char *url_path;      /* path URI-encoded as sent on the wire */
	char *url_query;     /* "a=1&b=x%20y" as sent ("" when none), sorted */
} s3_sigv4_output;

/* The signer itself adds host, x-amz-date, x-amz-content-sha256 and (when a
 * token is given) x-amz-security-token to the signed headers; the caller must
 * send those same headers.  Header values are trimmed and inner runs of
 * spaces collapsed.  Returns 0 or -ENOMEM / -EINVAL. */
int s3_sigv4_sign(const s3_sigv4_input *in, s3_sigv4_output *out) S3_WARN_UNUSED;
void s3_sigv4_output_clear(s3_sigv4_output *out);

/* Lower-case hex SHA-256 of a buffer; out must hold 65 bytes. */
void s3_sha256_hex(const void *data, size_t len, char out[65]);

/* ---------------------------------------------------------------- creds */

typedef struct s3_credentials {
	char *access_key;
	char *secret_key;
	char *session_token; /* NULL when none */
	time_t expiration;   /* 0: does not expire */
} s3_credentials;

void s3_credentials_clear(s3_credentials *c);

typedef struct s3_cred_options {
	const char *passwd_file; /* option passwd_file */
	const char *profile;     /* option profile; else $AWS_PROFILE; else "default" */
	const char *bucket;      /* for "bucket:AK:SK" lines of passwd files */
	s3_log_fn log;
	int log_level;
} s3_cred_options;

/* The chain, first found wins:
 *  1. opts->passwd_file (must exist; refused when group/other can read it)
 *  2. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN
 *  3. the profile in $AWS_SHARED_CREDENTIALS_FILE (~/.aws/credentials) and
 *     $AWS_CONFIG_FILE (~/.aws/config, "[profile NAME]" sections)
 *  4. ~/.passwd-s3fs, then /etc/passwd-s3fs (s3fs formats "AK:SK" and
 *     "bucket:AK:SK"; refused when group/other can read them)
 *  5. ECS: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI (http://169.254.170.2 +
 *     uri) or _FULL_URI, with AWS_CONTAINER_AUTHORIZATION_TOKEN
 *  6. EC2 IMDSv2: PUT /latest/api/token, then
 *     /latest/meta-data/iam/security-credentials/[ROLE]; base URL from
 *     $AWS_EC2_METADATA_SERVICE_ENDPOINT, default http://169.254.169.254;
 *     skipped when AWS_EC2_METADATA_DISABLED=true.
 * Temporary credentials (5, 6) are refreshed when less than 5 minutes (or
 * 1/4 of their lifetime, whichever is less) remain.  Thread-safe. */
typedef struct s3_cred_provider s3_cred_provider;

/* NULL on failure, with a one-line reason in errbuf, e.g. "no credentials
 * found (looked in: passwd_file option, environment, profile default in
 * /root/.aws/credentials, ..., EC2 instance metadata)". */
s3_cred_provider *s3_creds_new(const s3_cred_options *opts, char *errbuf, size_t errlen);
void s3_creds_free(s3_cred_provider *p);

/* A copy of the current credentials (refreshed first when due); the caller
 * clears it.  Returns 0 or a negative errno with details in err. */
int s3_creds_get(s3_cred_provider *p, s3_credentials *out, s3_error *err) S3_WARN_UNUSED;

/* "environment", "profile NAME", "passwd_file PATH", "ECS container",
 * "EC2 instance role ROLE". */
const char *s3_creds_source(const s3_cred_provider *p);

/* Region discovery, in this order: the profile's `region` in the config
 * (or credentials) file, AWS_REGION, AWS_DEFAULT_REGION, IMDS
 * (/latest/meta-data/placement/region, only when the credentials came from
 * IMDS).  malloc'd, NULL when none is known. */
char *s3_creds_region(const s3_cred_provider *p);

/* ---------------------------------------------------------------- xml */

/* ListBucketResult (ListObjectsV2).  When <EncodingType>url</EncodingType> is
 * present, keys, prefixes and StartAfter are URI-decoded.  Returns 0 or
 * -EPROTO (malformed, or not a ListBucketResult), -ENOMEM. */
int s3_xml_parse_list(const char *buf, size_t len, s3_list_page *out) S3_WARN_UNUSED;

/* <Error><Code/><Message/><RequestId/></Error>; returns 0 when buf is such a
 * document (fields filled, http_status untouched), -EPROTO otherwise. */
int s3_xml_parse_error(const char *buf, size_t len, s3_error *err) S3_WARN_UNUSED;

/* InitiateMultipartUploadResult -> malloc'd UploadId. */
int s3_xml_parse_mpu_initiate(const char *buf, size_t len, char **upload_id) S3_WARN_UNUSED;

/* CompleteMultipartUploadResult, CopyObjectResult, CopyPartResult: the ETag.
 * A 200 response may instead hold an <Error>: then returns -EIO with err
 * filled from it. */
int s3_xml_parse_etag_result(const char *buf, size_t len, char etag[S3_ETAG_MAX],
                             s3_error *err) S3_WARN_UNUSED;

/* DeleteResult: returns 0 when no <Error> entry is present, else -EIO with
 * err filled from the first one (message names the key). */
int s3_xml_parse_delete_result(const char *buf, size_t len, s3_error *err) S3_WARN_UNUSED;

/* ListMultipartUploadsResult: appends to out; sets *truncated and the next
 * markers (malloc'd, NULL when absent). */
int s3_xml_parse_mpu_list(const char *buf, size_t len, s3_mpu_list *out, bool *truncated,
                          char **next_key_marker, char **next_upload_id_marker) S3_WARN_UNUSED;

/* Build request bodies; malloc'd NUL-terminated documents, NULL on ENOMEM. */
char *s3_xml_build_complete(const s3_part *parts, size_t n);
char *s3_xml_build_delete(const char *const *keys, size_t n); /* <Quiet>true</Quiet> */

/* ---------------------------------------------------------------- time */

/* "2009-10-12T17:50:30.000Z" -> ns since the epoch; -1 on bad input. */
int64_t s3_parse_iso8601(const char *s);
/* "Wed, 12 Oct 2009 17:50:00 GMT" -> ns since the epoch; -1 on bad input. */
int64_t s3_parse_http_date(const char *s);

/* ---------------------------------------------------------------- http */

#include <pthread.h>

#include <curl/curl.h>

#define S3_HTTP_MAX_QUERY   12
#define S3_HTTP_MAX_HEADERS 24

struct s3_client {
	/* Immutable after s3_client_new(). */
	char *bucket;
	char *scheme;    /* "http" or "https" */
	char *host;      /* endpoint host, no port */
	int port;        /* 0: the scheme's default */
	char *base_path; /* endpoint path prefix, "" or "/something" */
	bool path_style;
	char *region;
	char *ca_bundle;
	long connect_timeout_s;
	long readwrite_timeout_s;
	int retries;
	double retry_max_seconds;
	enum s3_sse_type sse;
	char *sse_kms_key_id;
	char *sse_c_key_b64;     /* base64 of the 32-byte key */
	char *sse_c_key_md5_b64; /* base64 of its MD5 */
	s3_log_fn log;
	int log_level;
	s3_cred_provider *creds;

	/* Idle easy handles; each keeps its own connection cache alive. */
	pthread_mutex_t pool_lock;
	CURL **pool;
	size_t pool_n, pool_cap;

	/* Updated with __atomic builtins. */
	uint64_t stats_requests[S3_REQ__COUNT];
	uint64_t stats_retries, stats_errors, stats_bytes_down, stats_bytes_up;
};

typedef struct s3_http_req {
	enum s3_req_type type;
	const char *method; /* "GET", "HEAD", "PUT", "POST", "DELETE" */
	const char *key;    /* NULL: the bucket itself */
	s3_kv query[S3_HTTP_MAX_QUERY];
	size_t n_query;
	s3_kv headers[S3_HTTP_MAX_HEADERS]; /* signed and sent */
	size_t n_headers;
	bool sse_c;             /* send the SSE-C customer key headers */
	bool sse_c_copy_source; /* ... and the copy-source ones */

	/* Request body: a buffer, or `body_len` bytes of body_fd from
	 * body_fd_off (pread).  body_fd < 0 means the buffer. */
	const void *body;
	uint64_t body_len;
	int body_fd;
	uint64_t body_fd_off;

	/* Response body of a successful GET: streamed to sink (bytes at object
	 * offset range_off + n); else collected into s3_http_resp.body. */
	s3_sink_fn sink;
	void *sink_ctx;
	bool has_range;
	uint64_t range_off, range_len; /* range_len 0: to the end */
	const char *if_match;

	/* A 2xx answer's collected body goes to parse (when set), inside the
	 * retry loop: -EPROTO (a malformed or truncated document) is retried
	 * like a broken connection, and so is an <Error> in a 200 whose code
	 * parse put in err and that is transient.  parse must leave no
	 * partial output behind when it fails. */
	int (*parse)(void *ctx, const char *body, size_t len, s3_error *err);
	void *parse_ctx;
	/* Sends Content-MD5 (the server refuses a body that arrived different)
	 * and checks that the answer's ETag, when it has the form of an MD5
	 * (32 hex digits) and the encryption keeps ETags MD5s (none, SSE-S3),
	 * is the MD5 of what was sent: a mismatch is retried, then fails with
	 * EIO.  PUT Object and UploadPart. */
	bool content_md5;
} s3_http_req;

typedef struct s3_http_resp {
	long status;
	char *body; /* NUL-terminated, collected bodies only */
	size_t body_len;
	s3_head head; /* ETag, Last-Modified, type, x-amz-meta-*, size */
	char request_id[128];
} s3_http_resp;

void s3_http_req_init(s3_http_req *rq, enum s3_req_type type, const char *method, const char *key);
/* Adds a query parameter / header; the strings are borrowed. -E2BIG when full. */
int s3_http_add_query(s3_http_req *rq, const char *name, const char *value) S3_WARN_UNUSED;
int s3_http_add_header(s3_http_req *rq, const char *name, const char *value) S3_WARN_UNUSED;

/* Signs and sends the request, retrying as s3.h describes.  Returns 0 for a
 * 2xx response, else a negative errno with err filled (S3 error XML parsed).
 * rs is filled in both cases and must be cleared by the caller. */
int s3_http_perform(s3_client *c, s3_http_req *rq, s3_http_resp *rs, s3_error *err) S3_WARN_UNUSED;
void s3_http_resp_clear(s3_http_resp *rs);

/* Whether an S3 error code is transient (SlowDown, InternalError, ...). */
bool s3_http_code_is_transient(const char *code);

void s3_log(const s3_client *c, int level, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

#endif
