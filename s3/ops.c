/*
 * ops.c - the S3 operations of s3.h, each one request (or a bounded series)
 * built on s3_http_perform().
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "internal.h"

#define MAX_META_HEADERS 12

/* Header storage for metadata: "x-amz-meta-NAME" strings live here for the
 * duration of one request. */
struct meta_headers {
	char *names[MAX_META_HEADERS];
	size_t n;
};

static void meta_headers_clear(struct meta_headers *mh)
{
	for (size_t i = 0; i < mh->n; i++)
		free(mh->names[i]);
	mh->n = 0;
}

static int add_put_headers(s3_client *c, s3_http_req *rq, const s3_put_opts *o,
                           struct meta_headers *mh, bool sse_headers)
{
	int r;

	if (o && o->meta) {
		if (o->meta->n > MAX_META_HEADERS)
			return -E2BIG;
		for (size_t i = 0; i < o->meta->n; i++) {
			if (asprintf(&mh->names[mh->n], "x-amz-meta-%s", o->meta->items[i].name) <
			    0)
				return -ENOMEM;
			r = s3_http_add_header(rq, mh->names[mh->n], o->meta->items[i].value);
			mh->n++;
			if (r)
				return r;
		}
	}
	r = s3_http_add_header(rq, "content-type",
	                       o && o->content_type ? o->content_type : "application/octet-stream");
	if (r || !sse_headers)
		return r;
	if (c->sse == S3_SSE_S3) {
		r = s3_http_add_header(rq, "x-amz-server-side-encryption", "AES256");
	} else if (c->sse == S3_SSE_KMS) {
		r = s3_http_add_header(rq, "x-amz-server-side-encryption", "aws:kms");
		if (!r && c->sse_kms_key_id)
			r = s3_http_add_header(rq, "x-amz-server-side-encryption-aws-kms-key-id",
			                       c->sse_kms_key_id);
	} else if (c->sse == S3_SSE_C) {
		rq->sse_c = true;
	}
	return r;
}

static void set_local_error(s3_error *err, int e, const char *what)
{
	if (!err)
		return;
	memset(err, 0, sizeof(*err));
	err->sys_errno = e;
	snprintf(err->message, sizeof(err->message), "%s", what);
}

/* ---------------------------------------------------------------- parsers
 * Run by s3_http_perform on a 2xx body, inside its retry loop. */

static int parse_list(void *ctx, const char *body, size_t len, s3_error *err)
{
	(void)err;
	return s3_xml_parse_list(body, len, ctx);
}

static int parse_initiate(void *ctx, const char *body, size_t len, s3_error *err)
{
	(void)err;
	return s3_xml_parse_mpu_initiate(body, len, ctx);
}

static int parse_etag_result(void *ctx, const char *body, size_t len, s3_error *err)
{
	return s3_xml_parse_etag_result(body, len, ctx, err);
}

static int parse_delete_result(void *ctx, const char *body, size_t len, s3_error *err)
{
	(void)ctx;
	return s3_xml_parse_delete_result(body, len, err);
}

struct mpu_list_ctx {
	s3_mpu_list *out;
	bool *truncated;
	char **nk, **ni;
};

/* Appends one page; on failure leaves out as it was (s3_xml_parse_mpu_list
 * does), so a retry starts clean. */
static int parse_mpu_list(void *ctx, const char *body, size_t len, s3_error *err)
{
	struct mpu_list_ctx *m = ctx;

	(void)err;
	return s3_xml_parse_mpu_list(body, len, m->out, m->truncated, m->nk, m->ni);
}

/* ---------------------------------------------------------------- listing */

int s3_list_objects(s3_client *c, const s3_list_params *p, s3_list_page *out, s3_error *err)
{
	s3_http_req rq;
	s3_http_resp rs;
	char maxkeys[16];
	int r;

	memset(out, 0, sizeof(*out));
	s3_http_req_init(&rq, S3_REQ_LIST, "GET", NULL);
	r = s3_http_add_query(&rq, "list-type", "2");
	if (!r)
		r = s3_http_add_query(&rq, "encoding-type", "url");
	if (!r && p->prefix && *p->prefix)
		r = s3_http_add_query(&rq, "prefix", p->prefix);
	if (!r && p->delimiter && *p->delimiter)
		r = s3_http_add_query(&rq, "delimiter", p->delimiter);
	if (!r && p->continuation_token && *p->continuation_token)
		r = s3_http_add_query(&rq, "continuation-token", p->continuation_token);
	if (!r && p->start_after && *p->start_after)
		r = s3_http_add_query(&rq, "start-after", p->start_after);
	if (!r && p->max_keys > 0) {
		snprintf(maxkeys, sizeof(maxkeys), "%d", p->max_keys);
		r = s3_http_add_query(&rq, "max-keys", maxkeys);
	}
	if (!r && p->fetch_owner)
		r = s3_http_add_query(&rq, "fetch-owner", "true");
	if (r)
		return r;
	rq.parse = parse_list;
	rq.parse_ctx = out;
	r = s3_http_perform(c, &rq, &rs, err);
	s3_http_resp_clear(&rs);
	return r;
}

/* ---------------------------------------------------------------- objects */

static void head_take(s3_head *dst, s3_head *src)
{
	s3_head_clear(dst);
	*dst = *src;
	memset(src, 0, sizeof(*src));
}

int s3_head_object(s3_client *c, const char *key, s3_head *out, s3_error *err)
{
	s3_http_req rq;
	s3_http_resp rs;
	int r;

	memset(out, 0, sizeof(*out));
	s3_http_req_init(&rq, S3_REQ_HEAD, "HEAD", key);
	rq.sse_c = c->sse == S3_SSE_C;
	r = s3_http_perform(c, &rq, &rs, err);
	if (!r)
		head_take(out, &rs.head);
	s3_http_resp_clear(&rs);
	return r;
}

int s3_get_object(s3_client *c, const char *key, const s3_get_params *p, s3_sink_fn sink, void *ctx,
                  s3_head *head, s3_error *err)
{
	s3_http_req rq;
	s3_http_resp rs;
	int r;

	if (head)
		memset(head, 0, sizeof(*head));
	s3_http_req_init(&rq, S3_REQ_GET, "GET", key);
	rq.sse_c = c->sse == S3_SSE_C;
	rq.sink = sink;
	rq.sink_ctx = ctx;
	if (p) {
		rq.has_range = p->offset || p->length;
		rq.range_off = p->offset;
		rq.range_len = p->length;
		rq.if_match = p->if_match;
	}
	r = s3_http_perform(c, &rq, &rs, err);
	if (!r && head)
		head_take(head, &rs.head);
	s3_http_resp_clear(&rs);
	return r;
}

struct buf_sink {
	char *buf;
	size_t len;
	uint64_t base;
	size_t got;
};

static int buf_sink_write(void *ctx, uint64_t offset, const void *data, size_t len)
{
	struct buf_sink *b = ctx;
	uint64_t rel = offset - b->base;

	if (rel + len > b->len)
		return -EOVERFLOW;
	memcpy(b->buf + rel, data, len);
	if (rel + len > b->got)
		b->got = (size_t)(rel + len);
	return 0;
}

int s3_get_object_buf(s3_client *c, const char *key, const s3_get_params *p, void *buf,
                      size_t buflen, size_t *got, s3_head *head, s3_error *err)
{
	struct buf_sink b = {.buf = buf, .len = buflen, .base = p ? p->offset : 0};
	int r = s3_get_object(c, key, p, buf_sink_write, &b, head, err);

	if (got)
		*got = b.got;
	return r;
}

struct fd_sink {
	int fd;
	uint64_t fd_base;
	uint64_t obj_base;
	uint64_t got;
};

static int fd_sink_write(void *ctx, uint64_t offset, const void *data, size_t len)
{
	struct fd_sink *f = ctx;
	const char *p = data;
	uint64_t pos = f->fd_base + (offset - f->obj_base);

	while (len) {
		ssize_t n = pwrite(f->fd, p, len, (off_t)pos);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
		pos += (uint64_t)n;
	}
	if (pos - f->fd_base > f->got)
		f->got = pos - f->fd_base;
	return 0;
}

int s3_get_object_fd(s3_client *c, const char *key, const s3_get_params *p, int fd,
                     uint64_t fd_offset, uint64_t *got, s3_head *head, s3_error *err)
{
	struct fd_sink f = {.fd = fd, .fd_base = fd_offset, .obj_base = p ? p->offset : 0};
	int r = s3_get_object(c, key, p, fd_sink_write, &f, head, err);

	if (got)
		*got = f.got;
	return r;
}

static int put_common(s3_client *c, const char *key, const void *buf, int fd, uint64_t offset,
                      uint64_t len, const s3_put_opts *o, char etag_out[S3_ETAG_MAX], s3_error *err)
{
	struct meta_headers mh = {0};
	s3_http_req rq;
	s3_http_resp rs;
	int r;

	s3_http_req_init(&rq, S3_REQ_PUT, "PUT", key);
	r = add_put_headers(c, &rq, o, &mh, true);
	if (r) {
		set_local_error(err, -r, "too much user metadata");
		meta_headers_clear(&mh);
		return r;
	}
	rq.body = buf;
	rq.body_fd = fd;
	rq.body_fd_off = offset;
	rq.body_len = len;
	rq.content_md5 = true;
	r = s3_http_perform(c, &rq, &rs, err);
	if (!r && etag_out)
		snprintf(etag_out, S3_ETAG_MAX, "%s", rs.head.etag);
	s3_http_resp_clear(&rs);
	meta_headers_clear(&mh);
	return r;
}

int s3_put_object_fd(s3_client *c, const char *key, int fd, uint64_t offset, uint64_t len,
                     const s3_put_opts *o, char etag_out[S3_ETAG_MAX], s3_error *err)
{
	return put_common(c, key, NULL, fd, offset, len, o, etag_out, err);
}

int s3_put_object_buf(s3_client *c, const char *key, const void *buf, size_t len,
                      const s3_put_opts *o, char etag_out[S3_ETAG_MAX], s3_error *err)
{
	return put_common(c, key, buf, -1, 0, len, o, etag_out, err);
}

/* "/bucket/key" URI-encoded, as x-amz-copy-source wants it. */
static char *copy_source(const s3_client *c, const char *src_key)
{
	char *enc = s3_uri_encode(src_key, true), *out = NULL;

	if (enc && asprintf(&out, "/%s/%s", c->bucket, enc) < 0)
		out = NULL;
	free(enc);
	return out;
}

/* A copy (and a CompleteMultipartUpload) answers 200 before it is done and
 * may then report an error in the body; s3_http_perform retries a transient
 * one, and a malformed document. */
static int perform_copy(s3_client *c, s3_http_req *rq, char etag_out[S3_ETAG_MAX], s3_error *err)
{
	s3_http_resp rs;
	char etag[S3_ETAG_MAX] = "";
	int r;

	rq->parse = parse_etag_result;
	rq->parse_ctx = etag;
	r = s3_http_perform(c, rq, &rs, err);
	if (!r && etag_out)
		snprintf(etag_out, S3_ETAG_MAX, "%s", etag);
	s3_http_resp_clear(&rs);
	return r;
}

int s3_copy_object(s3_client *c, const char *src_key, const char *dst_key,
                   enum s3_metadata_directive d, const s3_put_opts *o, char etag_out[S3_ETAG_MAX],
                   s3_error *err)
{
	struct meta_headers mh = {0};
	s3_http_req rq;
	char *src = copy_source(c, src_key);
	int r;

	if (!src) {
		set_local_error(err, ENOMEM, "out of memory");
		return -ENOMEM;
	}
	s3_http_req_init(&rq, S3_REQ_COPY, "PUT", dst_key);
	r = s3_http_add_header(&rq, "x-amz-copy-source", src);
	if (!r)
		r = s3_http_add_header(&rq, "x-amz-metadata-directive",
		                       d == S3_META_REPLACE ? "REPLACE" : "COPY");
	if (!r && d == S3_META_REPLACE)
		r = add_put_headers(c, &rq, o, &mh, true);
	else if (!r && c->sse != S3_SSE_NONE)
		r = add_put_headers(c, &rq,
		                    &(s3_put_opts){.content_type = o ? o->content_type : NULL}, &mh,
		                    true);
	rq.sse_c_copy_source = c->sse == S3_SSE_C;
	if (r)
		set_local_error(err, -r, "too much user metadata");
	else
		r = perform_copy(c, &rq, etag_out, err);
	meta_headers_clear(&mh);
	free(src);
	return r;
}

int s3_delete_object(s3_client *c, const char *key, s3_error *err)
{
	s3_http_req rq;
	s3_http_resp rs;
	int r;

	s3_http_req_init(&rq, S3_REQ_DELETE, "DELETE", key);
	r = s3_http_perform(c, &rq, &rs, err);
	if (r == -ENOENT && rs.status == 404 && err && strcmp(err->code, "NoSuchBucket") != 0)
		r = 0; /* deleting what is gone is a success, as on S3 */
	s3_http_resp_clear(&rs);
	return r;
}

static void md5_b64(const void *data, size_t len, char out[32])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;

	EVP_Digest(data, len, md, &mdlen, EVP_md5(), NULL);
	EVP_EncodeBlock((unsigned char *)out, md, (int)mdlen);
}

int s3_delete_objects(s3_client *c, const char *const *keys, size_t n, s3_error *err)
{
	int r = 0;

	for (size_t off = 0; off < n && !r; off += 1000) {
		size_t batch = n - off > 1000 ? 1000 : n - off;
		char *doc = s3_xml_build_delete(keys + off, batch), md5[32];
		s3_http_req rq;
		s3_http_resp rs;

		if (!doc) {
			set_local_error(err, ENOMEM, "out of memory");
			return -ENOMEM;
		}
		md5_b64(doc, strlen(doc), md5);
		s3_http_req_init(&rq, S3_REQ_DELETE, "POST", NULL);
		r = s3_http_add_query(&rq, "delete", "");
		if (!r)
			r = s3_http_add_header(&rq, "content-md5", md5);
		if (!r)
			r = s3_http_add_header(&rq, "content-type", "application/xml");
		rq.body = doc;
		rq.body_len = strlen(doc);
		rq.parse = parse_delete_result;
		if (!r)
			r = s3_http_perform(c, &rq, &rs, err);
		else
			memset(&rs, 0, sizeof(rs));
		s3_http_resp_clear(&rs);
		free(doc);
	}
	return r;
}

/* ---------------------------------------------------------------- multipart */

int s3_mpu_create(s3_client *c, const char *key, const s3_put_opts *o, char **upload_id_out,
                  s3_error *err)
{
	struct meta_headers mh = {0};
	s3_http_req rq;
	s3_http_resp rs;
	int r;

	*upload_id_out = NULL;
	s3_http_req_init(&rq, S3_REQ_MULTIPART, "POST", key);
	r = s3_http_add_query(&rq, "uploads", "");
	if (!r)
		r = add_put_headers(c, &rq, o, &mh, true);
	if (r) {
		set_local_error(err, -r, "too much user metadata");
		meta_headers_clear(&mh);
		return r;
	}
	rq.parse = parse_initiate;
	rq.parse_ctx = upload_id_out;
	r = s3_http_perform(c, &rq, &rs, err);
	s3_http_resp_clear(&rs);
	meta_headers_clear(&mh);
	return r;
}

int s3_mpu_upload_part(s3_client *c, const char *key, const char *upload_id, int part_number,
                       int fd, uint64_t offset, uint64_t len, char etag_out[S3_ETAG_MAX],
                       s3_error *err)
{
	s3_http_req rq;
	s3_http_resp rs;
	char pn[16];
	int r;

	snprintf(pn, sizeof(pn), "%d", part_number);
	s3_http_req_init(&rq, S3_REQ_MULTIPART, "PUT", key);
	r = s3_http_add_query(&rq, "partNumber", pn);
	if (!r)
		r = s3_http_add_query(&rq, "uploadId", upload_id);
	if (r)
		return r;
	rq.sse_c = c->sse == S3_SSE_C;
	rq.body_fd = fd;
	rq.body_fd_off = offset;
	rq.body_len = len;
	rq.content_md5 = true;
	r = s3_http_perform(c, &rq, &rs, err);
	if (!r) {
		if (!rs.head.etag[0]) {
			set_local_error(err, EPROTO, "UploadPart response has no ETag");
			r = -EPROTO;
		} else if (etag_out) {
			snprintf(etag_out, S3_ETAG_MAX, "%s", rs.head.etag);
		}
	}
	s3_http_resp_clear(&rs);
	return r;
}

int s3_mpu_upload_part_copy(s3_client *c, const char *key, const char *upload_id, int part_number,
                            const char *src_key, uint64_t src_offset, uint64_t len,
                            char etag_out[S3_ETAG_MAX], s3_error *err)
{
	s3_http_req rq;
	char pn[16], range[64], *src = copy_source(c, src_key);
	int r;

	if (!src || !len) {
		free(src);
		set_local_error(err, src ? EINVAL : ENOMEM,
		                src ? "empty copy range" : "out of memory");
		return src ? -EINVAL : -ENOMEM;
	}
	snprintf(pn, sizeof(pn), "%d", part_number);
	snprintf(range, sizeof(range), "bytes=%" PRIu64 "-%" PRIu64, src_offset,
	         src_offset + len - 1);
	s3_http_req_init(&rq, S3_REQ_MULTIPART, "PUT", key);
	r = s3_http_add_query(&rq, "partNumber", pn);
	if (!r)
		r = s3_http_add_query(&rq, "uploadId", upload_id);
	if (!r)
		r = s3_http_add_header(&rq, "x-amz-copy-source", src);
	if (!r)
		r = s3_http_add_header(&rq, "x-amz-copy-source-range", range);
	rq.sse_c = c->sse == S3_SSE_C;
	rq.sse_c_copy_source = c->sse == S3_SSE_C;
	if (!r)
		r = perform_copy(c, &rq, etag_out, err);
	free(src);
	return r;
}

/* Two ETags equal but for quotes and the case of hex digits. */
static bool etag_eq(const char *a, const char *b)
{
	size_t la, lb;

	a += a[0] == '"';
	b += b[0] == '"';
	la = strlen(a) - (a[0] && a[strlen(a) - 1] == '"');
	lb = strlen(b) - (b[0] && b[strlen(b) - 1] == '"');
	return la == lb && strncasecmp(a, b, la) == 0;
}

/* The ETag AWS (and Swift) give a multipart object: "MD5(part MD5s)-N".
 * False when a part's ETag is not an MD5 (then nothing can be predicted). */
static bool mpu_expected_etag(const s3_part *parts, size_t n, char out[S3_ETAG_MAX])
{
	unsigned char *cat, md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;

	if (!n || !(cat = malloc(16 * n)))
		return false;
	for (size_t i = 0; i < n; i++) {
		const char *t = parts[i].etag + (parts[i].etag[0] == '"');
		for (int k = 0; k < 32; k++)
			if (!isxdigit((unsigned char)t[k])) {
				free(cat);
				return false;
			}
		if (t[32] != '\0' && t[32] != '"') {
			free(cat);
			return false;
		}
		for (int k = 0; k < 16; k++) {
			unsigned int b;
			sscanf(t + 2 * k, "%2x", &b);
			cat[16 * i + k] = (unsigned char)b;
		}
	}
	EVP_Digest(cat, 16 * n, md, &mdlen, EVP_md5(), NULL);
	free(cat);
	char *p = out;
	*p++ = '"';
	for (unsigned i = 0; i < mdlen; i++)
		p += sprintf(p, "%02x", md[i]);
	snprintf(p, S3_ETAG_MAX - (size_t)(p - out), "-%zu\"", n);
	return true;
}

/* The ETag a CompleteMultipartUpload answered is believed only when it is
 * the one the parts imply, or the one the object now has (servers with
 * another scheme, e.g. the MD5 of the whole object).  An answer that was
 * lost (or garbled: the retry finds the upload gone) still counts when the
 * object has the implied ETag. */
static int mpu_complete_verify(s3_client *c, const char *key, int r, const s3_part *parts, size_t n,
                               char etag[S3_ETAG_MAX], s3_error *err)
{
	char expect[S3_ETAG_MAX];
	bool have_expect = mpu_expected_etag(parts, n, expect);
	s3_head h;
	s3_error he;
	int hr;

	if (r == 0 && have_expect && etag_eq(etag, expect))
		return 0;
	if (r && !(r == -ENOENT && have_expect && strcmp(err->code, "NoSuchUpload") == 0))
		return r;
	hr = s3_head_object(c, key, &h, &he);
	if (hr) {
		if (r == 0) {
			*err = he;
			snprintf(err->message, sizeof(err->message),
			         "completed, but its ETag %.40s could not be checked (HEAD failed)",
			         etag);
			return -EIO;
		}
		return r;
	}
	if (r) { /* NoSuchUpload */
		if (etag_eq(h.etag, expect)) {
			s3_log(c, S3_LOG_INFO,
			       "s3: the multipart upload of %s completed although the answer was "
			       "lost",
			       key);
			snprintf(etag, S3_ETAG_MAX, "%s", h.etag);
			memset(err, 0, sizeof(*err));
			r = 0;
		}
	} else if (etag_eq(h.etag, etag)) {
		r = 0; /* the server's own ETag scheme */
	} else if (have_expect && etag_eq(h.etag, expect)) {
		s3_log(c, S3_LOG_WARNING,
		       "s3: CompleteMultipartUpload of %s answered ETag %s, but the object has "
		       "the ETag its parts imply, %s: taking that",
		       key, etag, h.etag);
		snprintf(etag, S3_ETAG_MAX, "%s", h.etag);
		r = 0;
	} else {
		memset(err, 0, sizeof(*err));
		err->sys_errno = EIO;
		snprintf(err->message, sizeof(err->message),
		         "CompleteMultipartUpload answered ETag %.40s, but the object has %.40s",
		         etag, h.etag);
		s3_log(c, S3_LOG_WARNING, "s3: %s: %s", key, err->message);
		r = -EIO;
	}
	s3_head_clear(&h);
	return r;
}

int s3_mpu_complete(s3_client *c, const char *key, const char *upload_id, const s3_part *parts,
                    size_t n, char etag_out[S3_ETAG_MAX], s3_error *err_out)
{
	s3_error scratch, *err = err_out ? err_out : &scratch;
	s3_http_req rq;
	char *doc = s3_xml_build_complete(parts, n), etag[S3_ETAG_MAX] = "";
	int r;

	if (!doc) {
		set_local_error(err, ENOMEM, "out of memory");
		return -ENOMEM;
	}
	s3_http_req_init(&rq, S3_REQ_MULTIPART, "POST", key);
	r = s3_http_add_query(&rq, "uploadId", upload_id);
	if (!r)
		r = s3_http_add_header(&rq, "content-type", "application/xml");
	rq.body = doc;
	rq.body_len = strlen(doc);
	if (!r) {
		r = perform_copy(c, &rq, etag, err);
		r = mpu_complete_verify(c, key, r, parts, n, etag, err);
	}
	if (!r && etag_out)
		snprintf(etag_out, S3_ETAG_MAX, "%s", etag);
	free(doc);
	return r;
}

int s3_mpu_abort(s3_client *c, const char *key, const char *upload_id, s3_error *err)
{
	s3_http_req rq;
	s3_http_resp rs;
	int r;

	s3_http_req_init(&rq, S3_REQ_MULTIPART, "DELETE", key);
	r = s3_http_add_query(&rq, "uploadId", upload_id);
	if (r)
		return r;
	r = s3_http_perform(c, &rq, &rs, err);
	s3_http_resp_clear(&rs);
	return r;
}

int s3_mpu_list_uploads(s3_client *c, const char *prefix, s3_mpu_list *out, s3_error *err)
{
	char *key_marker = NULL, *id_marker = NULL;
	bool truncated = true;
	int r = 0;

	memset(out, 0, sizeof(*out));
	for (int page = 0; truncated && page < 10000; page++) {
		s3_http_req rq;
		s3_http_resp rs;
		char *nk = NULL, *ni = NULL;

		s3_http_req_init(&rq, S3_REQ_MULTIPART, "GET", NULL);
		r = s3_http_add_query(&rq, "uploads", "");
		if (!r && prefix && *prefix)
			r = s3_http_add_query(&rq, "prefix", prefix);
		if (!r && key_marker)
			r = s3_http_add_query(&rq, "key-marker", key_marker);
		if (!r && id_marker)
			r = s3_http_add_query(&rq, "upload-id-marker", id_marker);
		if (r)
			break;
		struct mpu_list_ctx mc = {
		        .out = out, .truncated = &truncated, .nk = &nk, .ni = &ni};
		rq.parse = parse_mpu_list;
		rq.parse_ctx = &mc;
		r = s3_http_perform(c, &rq, &rs, err);
		s3_http_resp_clear(&rs);
		free(key_marker);
		free(id_marker);
		key_marker = nk;
		id_marker = ni;
		if (r)
			break;
		if (truncated && !key_marker)
			break; /* a server that says "more" but gives no marker */
	}
	free(key_marker);
	free(id_marker);
	if (r)
		s3_mpu_list_free(out);
	return r;
}

/* ---------------------------------------------------------------- upload */

struct mpu_job {
	s3_client *c;
	const char *key;
	const char *upload_id;
	int fd;
	uint64_t len, part_size;
	s3_part *parts;
	int n_parts;
	pthread_mutex_t lock;
	int next;   /* next part index to take */
	int failed; /* first -errno */
	s3_error err;
};

static void *mpu_worker(void *arg)
{
	struct mpu_job *j = arg;

	for (;;) {
		s3_error e;
		int i, r;

		pthread_mutex_lock(&j->lock);
		i = j->failed ? j->n_parts : j->next++;
		pthread_mutex_unlock(&j->lock);
		if (i >= j->n_parts)
			break;
		uint64_t off = (uint64_t)i * j->part_size;
		uint64_t plen = j->len - off < j->part_size ? j->len - off : j->part_size;
		j->parts[i].number = i + 1;
		r = s3_mpu_upload_part(j->c, j->key, j->upload_id, i + 1, j->fd, off, plen,
		                       j->parts[i].etag, &e);
		if (r) {
			pthread_mutex_lock(&j->lock);
			if (!j->failed) {
				j->failed = r;
				j->err = e;
			}
			pthread_mutex_unlock(&j->lock);
		}
	}
	return NULL;
}

/* CompleteMultipartUpload is not idempotent everywhere: when its answer was
 * lost and the retry finds the upload gone, the object may well be there.
 * It is ours if it has our size and either the multipart ETag our parts
 * imply or a LastModified after we started. */
static bool complete_landed(s3_client *c, const char *key, const struct mpu_job *j,
                            int64_t start_ns, char etag_out[S3_ETAG_MAX])
{
	char expect[S3_ETAG_MAX];
	bool have_expect = mpu_expected_etag(j->parts, (size_t)j->n_parts, expect);
	s3_head h;
	s3_error e;
	bool ours;

	if (s3_head_object(c, key, &h, &e))
		return false;
	ours = h.size == j->len && ((have_expect && etag_eq(h.etag, expect)) ||
	                            h.last_modified_ns >= start_ns - INT64_C(60000000000));
	if (ours && etag_out)
		snprintf(etag_out, S3_ETAG_MAX, "%s", h.etag);
	s3_head_clear(&h);
	return ours;
}

int s3_upload_fd(s3_client *c, const char *key, int fd, uint64_t len, uint64_t part_size,
                 int parallel, const s3_put_opts *o, char etag_out[S3_ETAG_MAX], s3_error *err)
{
	struct mpu_job j = {0};
	char *upload_id = NULL;
	pthread_t th[64];
	int nth = 0, r;

	if (part_size < (5u << 20))
		part_size = 5u << 20;
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	int64_t start_ns = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
	if (len < part_size)
		return s3_put_object_fd(c, key, fd, 0, len, o, etag_out, err);
	/* S3 allows 10,000 parts: grow the part size for huge files. */
	while ((len + part_size - 1) / part_size > 10000)
		part_size *= 2;
	if (parallel < 1)
		parallel = 1;
	if (parallel > 64)
		parallel = 64;

	r = s3_mpu_create(c, key, o, &upload_id, err);
	if (r)
		return r;
	j.c = c;
	j.key = key;
	j.upload_id = upload_id;
	j.fd = fd;
	j.len = len;
	j.part_size = part_size;
	j.n_parts = (int)((len + part_size - 1) / part_size);
	j.parts = calloc((size_t)j.n_parts, sizeof(*j.parts));
	pthread_mutex_init(&j.lock, NULL);
	if (!j.parts) {
		r = -ENOMEM;
		set_local_error(err, ENOMEM, "out of memory");
		goto abort;
	}
	if (parallel > j.n_parts)
		parallel = j.n_parts;
	for (int i = 1; i < parallel; i++) {
		if (pthread_create(&th[nth], NULL, mpu_worker, &j) == 0)
			nth++;
	}
	mpu_worker(&j); /* this thread works too */
	for (int i = 0; i < nth; i++)
		pthread_join(th[i], NULL);
	if (j.failed) {
		r = j.failed;
		if (err)
			*err = j.err;
		goto abort;
	}
	r = s3_mpu_complete(c, key, upload_id, j.parts, (size_t)j.n_parts, etag_out, err);
	if (r && complete_landed(c, key, &j, start_ns, etag_out)) {
		s3_log(c, S3_LOG_INFO,
		       "s3: the multipart upload of %s completed although the "
		       "answer was lost",
		       key);
		r = 0;
	}
	if (r)
		goto abort;
	goto out;
abort : {
	s3_error ae;
	if (s3_mpu_abort(c, key, upload_id, &ae))
		s3_log(c, S3_LOG_WARNING, "s3: could not abort multipart upload of %s", key);
}
out:
	pthread_mutex_destroy(&j.lock);
	free(j.parts);
	free(upload_id);
	return r;
}
