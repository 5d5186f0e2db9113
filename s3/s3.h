/*
 * s3.h - the S3 client library of bucketfs.
 *
 * Knows nothing of files or FUSE: endpoints and addressing style, SigV4, the
 * credential chain, one HTTP layer (libcurl, connection reuse, timeouts,
 * retries with backoff and jitter) and XML (libxml2) for listings, errors and
 * multipart uploads.
 *
 * Invariants
 *  - Every operation returns 0 on success or a negative errno.  The errno is
 *    derived from the one error type, `s3_error`, in exactly one place,
 *    s3_error_errno().  When `err` is non-NULL it receives the details (HTTP
 *    status, S3 error code and message, request id, curl error).
 *  - An s3_client is thread-safe: any number of threads may run operations on
 *    one client at once.  No global lock is held while a request is on the
 *    wire; idle connections are kept in a pool and reused.
 *  - Requests are retried with exponential backoff and jitter on 500, 502,
 *    503, 504, SlowDown, RequestTimeout, InternalError, connection failures,
 *    truncated bodies, malformed XML in a 2xx answer (-EPROTO once retries
 *    run out) and a PUT / UploadPart answer whose ETag has the form of an MD5
 *    but is not the MD5 of the bytes sent (those requests carry Content-MD5;
 *    -EIO once retries run out), bounded by `retries` and
 *    `retry_max_seconds`; never on other 4xx.  An XML answer over 16 MiB is
 *    refused at once (-EIO), so no answer is buffered without bound.  Every
 *    request the library issues is idempotent or made safe to repeat (a
 *    ranged GET resumes where the body broke off; a repeated Complete that
 *    finds the upload gone is checked with a HEAD).
 *  - Keys are passed and returned unencoded (UTF-8 byte strings, no leading
 *    slash); the library URI-encodes them for the wire and decodes
 *    `encoding-type=url` listings.
 *  - Secrets (secret key, session token, SSE-C key, Authorization headers)
 *    are never passed to the log callback.
 *
 * Ownership: result structs filled by the library are owned by the caller and
 * released with their *_free / *_clear function; inputs are only borrowed for
 * the duration of the call.
 */
#ifndef BUCKETFS_S3_H
#define BUCKETFS_S3_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define S3_WARN_UNUSED __attribute__((warn_unused_result))

/* An ETag as S3 returns it, quotes included: "\"9b2cf535f27731c974343645a3985328\"". */
#define S3_ETAG_MAX 80

/* ---------------------------------------------------------------- logging */

enum s3_log_level { S3_LOG_ERR = 0, S3_LOG_WARNING = 1, S3_LOG_INFO = 2, S3_LOG_DEBUG = 3 };

/* The library's only way of speaking; a NULL callback means silence. */
typedef void (*s3_log_fn)(int level, const char *fmt, va_list ap);

/* ---------------------------------------------------------------- errors */

typedef struct s3_error {
	int http_status;      /* 0 when no HTTP response was received */
	int curl_code;        /* CURLcode of the last attempt, 0 if none */
	int sys_errno;        /* a local failure (open, read, ENOMEM), 0 if none */
	char code[64];        /* S3 error code, e.g. "NoSuchKey"; "" if none */
	char message[256];    /* human-readable, never contains secrets */
	char request_id[128]; /* x-amz-request-id or <RequestId>, "" if none */
} s3_error;

/* The one place an S3 / HTTP / network failure becomes an errno (positive).
 * NoSuchKey, NoSuchBucket, 404 -> ENOENT; AccessDenied, 403 -> EACCES;
 * InvalidAccessKeyId, SignatureDoesNotMatch -> EPERM; InvalidRange -> EINVAL;
 * PreconditionFailed, 412 -> ESTALE; EntityTooLarge -> EFBIG; timeouts ->
 * ETIMEDOUT; could not connect -> ECONNREFUSED / EHOSTUNREACH; TLS failure ->
 * EPROTO; anything else -> EIO.  Returns 0 for an empty error. */
int s3_error_errno(const s3_error *err);

/* "HTTP 404 NoSuchKey: The specified key does not exist. (request id ...)" */
void s3_error_format(const s3_error *err, char *buf, size_t len);

/* ---------------------------------------------------------------- encoding */

/* URI-encodes `s` as SigV4 wants: every byte except A-Z a-z 0-9 - _ . ~ is
 * %XX (upper-case hex); '/' is kept when keep_slash.  malloc'd, NULL on ENOMEM. */
char *s3_uri_encode(const char *s, bool keep_slash);

/* Decodes %XX (and nothing else; '+' stays '+').  malloc'd, NULL on bad
 * input or ENOMEM. */
char *s3_uri_decode(const char *s);

/* ---------------------------------------------------------------- metadata */

/* User metadata: names are lower-case, without the "x-amz-meta-" prefix. */
typedef struct s3_meta_item {
	char *name;
	char *value;
} s3_meta_item;

typedef struct s3_meta {
	s3_meta_item *items;
	size_t n;
} s3_meta;

int s3_meta_set(s3_meta *m, const char *name, const char *value) S3_WARN_UNUSED;
const char *s3_meta_get(const s3_meta *m, const char *name);
int s3_meta_copy(s3_meta *dst, const s3_meta *src) S3_WARN_UNUSED;
void s3_meta_clear(s3_meta *m);

/* ---------------------------------------------------------------- client */

enum s3_sse_type {
	S3_SSE_NONE = 0,
	S3_SSE_S3,  /* x-amz-server-side-encryption: AES256 */
	S3_SSE_KMS, /* aws:kms, optional key id */
	S3_SSE_C,   /* customer key, 32 bytes read from a file */
};

typedef struct s3_config {
	/* "https://s3.amazonaws.com", "http://127.0.0.1:9000", ...  NULL: AWS
	 * for the region (https://s3.REGION.amazonaws.com). */
	const char *endpoint;
	const char *region;    /* NULL: from the credential chain, else us-east-1 */
	const char *bucket;    /* required */
	bool path_style;       /* true: http://host/bucket/key; false: bucket.host */
	const char *ca_bundle; /* NULL: the system's; TLS is always verified */

	long connect_timeout_s;   /* default 10 */
	long readwrite_timeout_s; /* no progress for this long aborts; default 60 */
	int retries;              /* attempts after the first; default 5 */
	double retry_max_seconds; /* total time budget for retries; default 120 */

	/* Credential chain inputs (see s3_creds in internal.h for the order). */
	const char *passwd_file;
	const char *profile;

	enum s3_sse_type sse;
	const char *sse_kms_key_id; /* S3_SSE_KMS, may be NULL */
	const char *sse_c_key_file; /* S3_SSE_C: file holding the 32-byte key
	                               (raw, or base64 on the first line) */

	s3_log_fn log;
	int log_level; /* messages above this level are not formatted */
} s3_config;

typedef struct s3_client s3_client;

/* Resolves credentials and region; does not touch the network except for
 * IMDS / ECS credentials.  On failure returns NULL and writes a one-line
 * reason to errbuf (for missing credentials: every place it looked). */
s3_client *s3_client_new(const s3_config *cfg, char *errbuf, size_t errlen);
void s3_client_free(s3_client *c);

const char *s3_client_region(const s3_client *c);
/* Where the credentials came from, e.g. "environment", "profile default",
 * "passwd_file /etc/passwd-s3fs", "EC2 instance role web-role". */
const char *s3_client_cred_source(const s3_client *c);

/* Request counters, updated atomically, one per request sent (retries
 * count again). */
enum s3_req_type {
	S3_REQ_LIST = 0,
	S3_REQ_HEAD,
	S3_REQ_GET,
	S3_REQ_PUT,
	S3_REQ_COPY,
	S3_REQ_DELETE,
	S3_REQ_MULTIPART, /* create, upload part (copy), complete, abort, list */
	S3_REQ_OTHER,
	S3_REQ__COUNT
};

typedef struct s3_stats {
	uint64_t requests[S3_REQ__COUNT];
	uint64_t retries;
	uint64_t errors; /* operations that failed after retries */
	uint64_t bytes_down;
	uint64_t bytes_up;
} s3_stats;

void s3_client_stats(const s3_client *c, s3_stats *out);
const char *s3_req_type_name(enum s3_req_type t); /* "LIST", "HEAD", ... */

/* ---------------------------------------------------------------- listing */

typedef struct s3_object {
	char *key;
	uint64_t size;
	char etag[S3_ETAG_MAX];
	int64_t last_modified_ns; /* nanoseconds since the epoch */
	char *owner_id;           /* only with fetch_owner, else NULL */
	char *owner_name;
	char *storage_class; /* may be NULL */
} s3_object;

typedef struct s3_list_params {
	const char *prefix;             /* NULL or "" for the whole bucket */
	const char *delimiter;          /* NULL for a flat listing */
	const char *continuation_token; /* NULL for the first page */
	const char *start_after;        /* NULL, or a key */
	int max_keys;                   /* 0: the server's default (1000) */
	bool fetch_owner;
} s3_list_params;

typedef struct s3_list_page {
	s3_object *objects;
	size_t n_objects;
	char **prefixes; /* common prefixes, decoded, ending in the delimiter */
	size_t n_prefixes;
	bool truncated;
	char *next_token; /* NextContinuationToken, NULL when not truncated */
} s3_list_page;

/* One ListObjectsV2 request (encoding-type=url, decoded here). */
int s3_list_objects(s3_client *c, const s3_list_params *p, s3_list_page *out,
                    s3_error *err) S3_WARN_UNUSED;
void s3_list_page_free(s3_list_page *page);

/* ---------------------------------------------------------------- objects */

typedef struct s3_head {
	uint64_t size; /* Content-Length of the object (not of a range) */
	char etag[S3_ETAG_MAX];
	int64_t last_modified_ns;
	char *content_type; /* may be NULL */
	s3_meta meta;       /* x-amz-meta-* */
} s3_head;

void s3_head_clear(s3_head *h);

int s3_head_object(s3_client *c, const char *key, s3_head *out, s3_error *err) S3_WARN_UNUSED;

/* Receives a GET body: `len` bytes that belong at `offset` of the object.
 * Bytes may be delivered again after a retry (same offsets, same data).
 * Return 0 to continue, a negative errno to abort the transfer. */
typedef int (*s3_sink_fn)(void *ctx, uint64_t offset, const void *data, size_t len);

typedef struct s3_get_params {
	uint64_t offset;
	uint64_t length;      /* 0: to the end of the object */
	const char *if_match; /* ETag the object must still have, or NULL:
	                         a mismatch fails with ESTALE */
} s3_get_params;

/* Streams the object (or a range of it) into `sink`; never buffers the whole
 * body.  `head` (optional) receives the object's headers; its size is the
 * whole object's size even for a range. */
int s3_get_object(s3_client *c, const char *key, const s3_get_params *p, s3_sink_fn sink, void *ctx,
                  s3_head *head, s3_error *err) S3_WARN_UNUSED;

/* Convenience sinks: into a buffer (bytes at buf[offset - p->offset]) and
 * into a file descriptor (pwrite at fd_offset + offset - p->offset). */
int s3_get_object_buf(s3_client *c, const char *key, const s3_get_params *p, void *buf,
                      size_t buflen, size_t *got, s3_head *head, s3_error *err) S3_WARN_UNUSED;
int s3_get_object_fd(s3_client *c, const char *key, const s3_get_params *p, int fd,
                     uint64_t fd_offset, uint64_t *got, s3_head *head,
                     s3_error *err) S3_WARN_UNUSED;

typedef struct s3_put_opts {
	const s3_meta *meta;      /* NULL: none */
	const char *content_type; /* NULL: application/octet-stream */
} s3_put_opts;

/* PUT `len` bytes of `fd` starting at `offset` (pread, the fd is not moved).
 * etag_out (optional) receives the new ETag. */
int s3_put_object_fd(s3_client *c, const char *key, int fd, uint64_t offset, uint64_t len,
                     const s3_put_opts *o, char etag_out[S3_ETAG_MAX],
                     s3_error *err) S3_WARN_UNUSED;
int s3_put_object_buf(s3_client *c, const char *key, const void *buf, size_t len,
                      const s3_put_opts *o, char etag_out[S3_ETAG_MAX],
                      s3_error *err) S3_WARN_UNUSED;

enum s3_metadata_directive { S3_META_COPY = 0, S3_META_REPLACE };

/* Server-side copy; with S3_META_REPLACE the object gets o->meta (a copy of an
 * object onto itself must use REPLACE).  A 200 response that carries an
 * <Error> body is an error. */
int s3_copy_object(s3_client *c, const char *src_key, const char *dst_key,
                   enum s3_metadata_directive d, const s3_put_opts *o, char etag_out[S3_ETAG_MAX],
                   s3_error *err) S3_WARN_UNUSED;

/* Deleting a key that does not exist succeeds (as S3 does). */
int s3_delete_object(s3_client *c, const char *key, s3_error *err) S3_WARN_UNUSED;

/* DeleteObjects in batches of at most 1000; fails if any key failed, with the
 * first failure in `err`. */
int s3_delete_objects(s3_client *c, const char *const *keys, size_t n,
                      s3_error *err) S3_WARN_UNUSED;

/* ---------------------------------------------------------------- multipart */

typedef struct s3_part {
	int number; /* 1 .. 10000 */
	char etag[S3_ETAG_MAX];
} s3_part;

/* upload_id_out is malloc'd; free() it. */
int s3_mpu_create(s3_client *c, const char *key, const s3_put_opts *o, char **upload_id_out,
                  s3_error *err) S3_WARN_UNUSED;
int s3_mpu_upload_part(s3_client *c, const char *key, const char *upload_id, int part_number,
                       int fd, uint64_t offset, uint64_t len, char etag_out[S3_ETAG_MAX],
                       s3_error *err) S3_WARN_UNUSED;
/* Copies [src_offset, src_offset + len) of src_key into the part. */
int s3_mpu_upload_part_copy(s3_client *c, const char *key, const char *upload_id, int part_number,
                            const char *src_key, uint64_t src_offset, uint64_t len,
                            char etag_out[S3_ETAG_MAX], s3_error *err) S3_WARN_UNUSED;
/* The ETag answered is believed only when it is MD5(part MD5s)-N or, after a
 * HEAD, the object's own; otherwise -EIO. */
int s3_mpu_complete(s3_client *c, const char *key, const char *upload_id, const s3_part *parts,
                    size_t n, char etag_out[S3_ETAG_MAX], s3_error *err) S3_WARN_UNUSED;
int s3_mpu_abort(s3_client *c, const char *key, const char *upload_id,
                 s3_error *err) S3_WARN_UNUSED;

typedef struct s3_mpu_info {
	char *key;
	char *upload_id;
	int64_t initiated_ns;
} s3_mpu_info;

typedef struct s3_mpu_list {
	s3_mpu_info *uploads;
	size_t n;
} s3_mpu_list;

/* All in-progress multipart uploads under `prefix` (pages followed). */
int s3_mpu_list_uploads(s3_client *c, const char *prefix, s3_mpu_list *out,
                        s3_error *err) S3_WARN_UNUSED;
void s3_mpu_list_free(s3_mpu_list *l);

/* Uploads `len` bytes of fd: one PUT when len < part_size, else a multipart
 * upload with up to `parallel` parts in flight (threads), aborted on
 * failure. */
int s3_upload_fd(s3_client *c, const char *key, int fd, uint64_t len, uint64_t part_size,
                 int parallel, const s3_put_opts *o, char etag_out[S3_ETAG_MAX],
                 s3_error *err) S3_WARN_UNUSED;

#endif
