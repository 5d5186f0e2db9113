/*
 * sigv4.c - AWS Signature Version 4 for S3, header-based ("Authorization:")
 * signing of a request whose payload travels in a single chunk.
 *
 * The canonical request is built the way S3 wants it, which differs from the
 * generic SigV4 rules in one place: the path is URI-encoded exactly once and
 * never normalized ("a//b" and "." stay as they are), because S3 keys are
 * opaque byte strings.  The query string that is signed is also the one that
 * is sent, so the two can never disagree.
 *
 * HMAC-SHA256 and SHA-256 come from OpenSSL; intermediate keys are wiped
 * before they are released.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "internal.h"

#define SIGV4_ALGORITHM    "AWS4-HMAC-SHA256"
#define SIGV4_AMZ_DATE_LEN 16 /* "20130524T000000Z" */
#define SIGV4_DATE_LEN     8  /* "20130524" */

/* ---------------------------------------------------------------- strbuf */

/* A growable string that remembers an allocation failure, so that a run of
 * appends needs one check at the end instead of one per call. */
struct sigv4_buf {
	char *s;
	size_t len;
	size_t cap;
	bool failed;
};

static void sigv4_buf_grow(struct sigv4_buf *b, size_t extra)
{
	size_t cap;
	char *s;

	if (b->failed)
		return;
	if (b->len + extra + 1 <= b->cap)
		return;
	cap = b->cap ? b->cap : 256;
	while (cap < b->len + extra + 1)
		cap *= 2;
	s = realloc(b->s, cap);
	if (!s) {
		b->failed = true;
		return;
	}
	b->s = s;
	b->cap = cap;
}

static void sigv4_buf_addn(struct sigv4_buf *b, const char *s, size_t n)
{
	sigv4_buf_grow(b, n);
	if (b->failed)
		return;
	memcpy(b->s + b->len, s, n);
	b->len += n;
	b->s[b->len] = '\0';
}

static void sigv4_buf_add(struct sigv4_buf *b, const char *s)
{
	sigv4_buf_addn(b, s, strlen(s));
}

static void sigv4_buf_addc(struct sigv4_buf *b, char c)
{
	sigv4_buf_addn(b, &c, 1);
}

/* Hands the string over to the caller (an empty buffer yields ""); NULL when
 * an append failed.  The buffer is left empty either way. */
static char *sigv4_buf_detach(struct sigv4_buf *b)
{
	char *s = b->s;

	if (!b->failed && !s)
		s = strdup("");
	if (b->failed) {
		free(s);
		s = NULL;
	}
	*b = (struct sigv4_buf){0};
	return s;
}

static void sigv4_buf_release(struct sigv4_buf *b)
{
	free(b->s);
	*b = (struct sigv4_buf){0};
}

/* ---------------------------------------------------------------- crypto */

static void sigv4_hex(const unsigned char *md, size_t n, char *out)
{
	static const char hex[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hex[md[i] >> 4];
		out[2 * i + 1] = hex[md[i] & 15];
	}
	out[2 * n] = '\0';
}

/* HMAC-SHA256(key, msg) into out[32]. */
static int sigv4_hmac(const void *key, size_t keylen, const char *msg, unsigned char out[32])
{
	unsigned int outlen = 0;

	/* OpenSSL only fails here when it cannot allocate its context. */
	if (!HMAC(EVP_sha256(), key, (int)keylen, (const unsigned char *)msg, strlen(msg), out,
	          &outlen) ||
	    outlen != 32)
		return -ENOMEM;
	return 0;
}

/* signature = HMAC(HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region),
 *                       service), "aws4_request"), string_to_sign) */
static int sigv4_signature(const s3_sigv4_input *in, const char *date, const char *sts,
                           char out[65])
{
	unsigned char k[32], sig[32];
	size_t seclen = strlen(in->secret_key);
	char *seed = malloc(seclen + 5);
	int ret;

	if (!seed)
		return -ENOMEM;
	memcpy(seed, "AWS4", 4);
	memcpy(seed + 4, in->secret_key, seclen + 1);
	ret = sigv4_hmac(seed, seclen + 4, date, k);
	if (!ret)
		ret = sigv4_hmac(k, sizeof(k), in->region, k);
	if (!ret)
		ret = sigv4_hmac(k, sizeof(k), in->service, k);
	if (!ret)
		ret = sigv4_hmac(k, sizeof(k), "aws4_request", k);
	if (!ret)
		ret = sigv4_hmac(k, sizeof(k), sts, sig);
	if (!ret)
		sigv4_hex(sig, sizeof(sig), out);
	/* The derived key is as good as the secret for a whole day. */
	OPENSSL_cleanse(seed, seclen + 4);
	OPENSSL_cleanse(k, sizeof(k));
	free(seed);
	return ret;
}

/* ---------------------------------------------------------------- query */

struct sigv4_param {
	char *name;  /* URI-encoded */
	char *value; /* URI-encoded, "" when empty */
};

static int sigv4_param_cmp(const void *a, const void *b)
{
	const struct sigv4_param *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	return c ? c : strcmp(x->value, y->value);
}

/* "a=1&b=x%20y": names and values encoded ('/' too), sorted by encoded name
 * and then by encoded value; an empty value still gets its '='. */
static int sigv4_canonical_query(const s3_sigv4_input *in, char **out)
{
	struct sigv4_param *p = NULL;
	struct sigv4_buf b = {0};
	size_t i, n = 0;
	int ret = -ENOMEM;

	*out = NULL;
	if (in->n_query) {
		p = calloc(in->n_query, sizeof(*p));
		if (!p)
			return -ENOMEM;
	}
	for (i = 0; i < in->n_query; i++, n++) {
		const char *v = in->query[i].value ? in->query[i].value : "";

		if (!in->query[i].name) {
			ret = -EINVAL;
			goto out;
		}
		p[i].name = s3_uri_encode(in->query[i].name, false);
		p[i].value = s3_uri_encode(v, false);
		if (!p[i].name || !p[i].value) {
			n++; /* free the half-made entry too */
			goto out;
		}
	}
	if (n)
		qsort(p, n, sizeof(*p), sigv4_param_cmp);
	for (i = 0; i < n; i++) {
		if (i)
			sigv4_buf_addc(&b, '&');
		sigv4_buf_add(&b, p[i].name);
		sigv4_buf_addc(&b, '=');
		sigv4_buf_add(&b, p[i].value);
	}
	*out = sigv4_buf_detach(&b);
	ret = *out ? 0 : -ENOMEM;
out:
	for (i = 0; i < n; i++) {
		free(p[i].name);
		free(p[i].value);
	}
	free(p);
	return ret;
}

/* ---------------------------------------------------------------- headers */

struct sigv4_header {
	char *name;   /* lower-case */
	char *value;  /* trimmed, inner runs of blanks collapsed to one space */
	size_t order; /* position in the input: duplicates keep their order */
};

static int sigv4_header_cmp(const void *a, const void *b)
{
	const struct sigv4_header *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	if (c)
		return c;
	return x->order < y->order ? -1 : x->order > y->order;
}

static bool sigv4_is_blank(unsigned char c)
{
	return c == ' ' || c == '\t';
}

/* An HTTP field name: visible ASCII except ':' (RFC 9110 token chars are
 * narrower, but this is enough to keep the canonical form unambiguous). */
static bool sigv4_name_ok(const char *name)
{
	if (!name || !*name)
		return false;
	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		if (*p <= ' ' || *p >= 0x7f || *p == ':')
			return false;
	return true;
}

/* A field value may hold blanks and visible bytes (UTF-8 included), but no
 * other control characters: a CR or LF would end the header on the wire. */
static bool sigv4_value_ok(const char *value)
{
	for (const unsigned char *p = (const unsigned char *)value; *p; p++)
		if ((*p < ' ' && *p != '\t') || *p == 0x7f)
			return false;
	return true;
}

static char *sigv4_lower(const char *s)
{
	char *out = strdup(s);

	if (out)
		for (char *p = out; *p; p++)
			if (*p >= 'A' && *p <= 'Z')
				*p = (char)(*p - 'A' + 'a');
	return out;
}

/* Trims the value and squeezes every run of blanks inside it to one space. */
static char *sigv4_trim_value(const char *s)
{
	char *out = malloc(strlen(s) + 1), *o = out;
	bool pending_space = false;

	if (!out)
		return NULL;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (sigv4_is_blank(*p)) {
			pending_space = o != out;
			continue;
		}
		if (pending_space)
			*o++ = ' ';
		pending_space = false;
		*o++ = (char)*p;
	}
	*o = '\0';
	return out;
}

/* Headers the signer sets itself; the caller must not pass them again. */
static bool sigv4_is_reserved(const char *lname)
{
	return strcmp(lname, "host") == 0 || strcmp(lname, "x-amz-date") == 0 ||
	       strcmp(lname, "x-amz-content-sha256") == 0 ||
	       strcmp(lname, "x-amz-security-token") == 0;
}

static int sigv4_header_set(struct sigv4_header *h, const char *name, const char *value,
                            size_t order)
{
	h->order = order;
	h->name = sigv4_lower(name);
	h->value = sigv4_trim_value(value ? value : "");
	return h->name && h->value ? 0 : -ENOMEM;
}

/* Appends the canonical header block ("name:v1,v2\n" per name, sorted) to
 * cr and the signed header list ("a;b;c") to sh. */
static int sigv4_canonical_headers(const s3_sigv4_input *in, bool with_token, struct sigv4_buf *cr,
                                   struct sigv4_buf *sh)
{
	const s3_kv own[] = {
	        {"host", in->host},
	        {"x-amz-content-sha256", in->payload_hash},
	        {"x-amz-date", in->amz_date},
	        {"x-amz-security-token", in->session_token},
	};
	size_t n_own = with_token ? 4 : 3;
	size_t total = in->n_headers + n_own, n = 0, i;
	struct sigv4_header *h = calloc(total, sizeof(*h));
	int ret = 0;

	if (!h)
		return -ENOMEM;
	for (i = 0; i < in->n_headers && !ret; i++, n++) {
		const s3_kv *kv = &in->headers[i];

		if (!sigv4_name_ok(kv->name) || (kv->value && !sigv4_value_ok(kv->value))) {
			ret = -EINVAL;
			break;
		}
		ret = sigv4_header_set(&h[n], kv->name, kv->value, n);
		if (!ret && sigv4_is_reserved(h[n].name))
			ret = -EINVAL;
	}
	for (i = 0; i < n_own && !ret; i++, n++)
		ret = sigv4_header_set(&h[n], own[i].name, own[i].value, n);
	if (ret)
		goto out;

	qsort(h, n, sizeof(*h), sigv4_header_cmp);
	for (i = 0; i < n; i++) {
		bool first = i == 0 || strcmp(h[i - 1].name, h[i].name) != 0;

		if (first) {
			if (i) {
				sigv4_buf_addc(cr, '\n');
				sigv4_buf_addc(sh, ';');
			}
			sigv4_buf_add(cr, h[i].name);
			sigv4_buf_addc(cr, ':');
			sigv4_buf_add(sh, h[i].name);
		} else {
			sigv4_buf_addc(cr, ',');
		}
		sigv4_buf_add(cr, h[i].value);
	}
	sigv4_buf_addc(cr, '\n');
	ret = cr->failed || sh->failed ? -ENOMEM : 0;
out:
	for (i = 0; i < n; i++) {
		free(h[i].name);
		free(h[i].value);
	}
	free(h);
	return ret;
}

/* ---------------------------------------------------------------- signing */

static bool sigv4_amz_date_ok(const char *d)
{
	if (!d || strlen(d) != SIGV4_AMZ_DATE_LEN || d[8] != 'T' || d[15] != 'Z')
		return false;
	for (int i = 0; i < 15; i++)
		if (i != 8 && (d[i] < '0' || d[i] > '9'))
			return false;
	return true;
}

/* Values that end up in the string to sign or the Credential= scope must not
 * be able to forge its line or field structure. */
static bool sigv4_word_ok(const char *s)
{
	if (!s || !*s)
		return false;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (*p <= ' ' || *p == 0x7f || *p == '/' || *p == ',')
			return false;
	return true;
}

static int sigv4_check_input(const s3_sigv4_input *in)
{
	if (!in->method || !*in->method || !in->host || !*in->host || !in->payload_hash ||
	    !in->secret_key || !in->access_key)
		return -EINVAL;
	if (!sigv4_word_ok(in->method) || !sigv4_word_ok(in->payload_hash) ||
	    !sigv4_word_ok(in->region) || !sigv4_word_ok(in->service) ||
	    !sigv4_word_ok(in->access_key))
		return -EINVAL;
	if (!sigv4_value_ok(in->host) || (in->session_token && !sigv4_value_ok(in->session_token)))
		return -EINVAL;
	if (!sigv4_amz_date_ok(in->amz_date))
		return -EINVAL;
	if (in->path && in->path[0] && in->path[0] != '/')
		return -EINVAL;
	if ((in->n_query && !in->query) || (in->n_headers && !in->headers))
		return -EINVAL;
	return 0;
}

static int sigv4_build(const s3_sigv4_input *in, s3_sigv4_output *out)
{
	bool with_token = in->session_token && in->session_token[0];
	const char *path = in->path && in->path[0] ? in->path : "/";
	struct sigv4_buf cr = {0}, sh = {0}, sts = {0}, auth = {0};
	char date[SIGV4_DATE_LEN + 1], cr_hash[65];
	int ret;

	memcpy(date, in->amz_date, SIGV4_DATE_LEN);
	date[SIGV4_DATE_LEN] = '\0';

	/* S3 wants the key encoded once, as it is sent: no double encoding. */
	out->url_path = s3_uri_encode(path, true);
	if (!out->url_path)
		return -ENOMEM;
	ret = sigv4_canonical_query(in, &out->url_query);
	if (ret)
		return ret;

	sigv4_buf_add(&cr, in->method);
	sigv4_buf_addc(&cr, '\n');
	sigv4_buf_add(&cr, out->url_path);
	sigv4_buf_addc(&cr, '\n');
	sigv4_buf_add(&cr, out->url_query);
	sigv4_buf_addc(&cr, '\n');
	ret = sigv4_canonical_headers(in, with_token, &cr, &sh);
	if (ret)
		goto fail;
	sigv4_buf_addc(&cr, '\n');
	sigv4_buf_addn(&cr, sh.s, sh.len);
	sigv4_buf_addc(&cr, '\n');
	sigv4_buf_add(&cr, in->payload_hash);
	out->signed_headers = sigv4_buf_detach(&sh);
	out->canonical_request = sigv4_buf_detach(&cr);
	if (!out->signed_headers || !out->canonical_request)
		return -ENOMEM;

	s3_sha256_hex(out->canonical_request, strlen(out->canonical_request), cr_hash);
	sigv4_buf_add(&sts, SIGV4_ALGORITHM "\n");
	sigv4_buf_add(&sts, in->amz_date);
	sigv4_buf_addc(&sts, '\n');
	sigv4_buf_add(&sts, date);
	sigv4_buf_addc(&sts, '/');
	sigv4_buf_add(&sts, in->region);
	sigv4_buf_addc(&sts, '/');
	sigv4_buf_add(&sts, in->service);
	sigv4_buf_add(&sts, "/aws4_request\n");
	sigv4_buf_add(&sts, cr_hash);
	out->string_to_sign = sigv4_buf_detach(&sts);
	if (!out->string_to_sign)
		return -ENOMEM;

	ret = sigv4_signature(in, date, out->string_to_sign, out->signature);
	if (ret)
		return ret;

	sigv4_buf_add(&auth, SIGV4_ALGORITHM " Credential=");
	sigv4_buf_add(&auth, in->access_key);
	sigv4_buf_addc(&auth, '/');
	sigv4_buf_add(&auth, date);
	sigv4_buf_addc(&auth, '/');
	sigv4_buf_add(&auth, in->region);
	sigv4_buf_addc(&auth, '/');
	sigv4_buf_add(&auth, in->service);
	sigv4_buf_add(&auth, "/aws4_request, SignedHeaders=");
	sigv4_buf_add(&auth, out->signed_headers);
	sigv4_buf_add(&auth, ", Signature=");
	sigv4_buf_add(&auth, out->signature);
	out->authorization = sigv4_buf_detach(&auth);
	return out->authorization ? 0 : -ENOMEM;

fail:
	sigv4_buf_release(&cr);
	sigv4_buf_release(&sh);
	return ret;
}

int s3_sigv4_sign(const s3_sigv4_input *in, s3_sigv4_output *out)
{
	int ret;

	*out = (s3_sigv4_output){0};
	ret = sigv4_check_input(in);
	if (!ret)
		ret = sigv4_build(in, out);
	if (ret)
		s3_sigv4_output_clear(out);
	return ret;
}

void s3_sigv4_output_clear(s3_sigv4_output *out)
{
	if (!out)
		return;
	free(out->canonical_request);
	free(out->string_to_sign);
	free(out->signed_headers);
	free(out->authorization);
	free(out->url_path);
	free(out->url_query);
	*out = (s3_sigv4_output){0};
}
