/*
 * xml.c - parsing and building of S3's XML documents with libxml2.
 *
 * Every response body is untrusted input.  Documents are parsed into a tree
 * with these rules:
 *  - Entities are never substituted (no XML_PARSE_NOENT) and no DTD is
 *    accepted at all: S3 never sends one, and refusing the DOCTYPE as soon as
 *    the parser meets it rules out both external entities (XXE) and entity
 *    expansion bombs before any entity is declared.  XML_PARSE_NONET keeps
 *    the parser off the network whatever else happens.
 *  - No XML_PARSE_HUGE: libxml2's default limits on text node size and
 *    nesting depth stay in force, and a page may hold at most
 *    XML_MAX_ENTRIES entries.
 *  - Elements are matched by local name whatever their namespace: AWS,
 *    Swift s3api and MinIO use http://s3.amazonaws.com/doc/2006-03-01/,
 *    error documents and some emulators none, and Google Cloud Storage
 *    http://doc.s3.amazonaws.com/2006-03-01.
 *  - Anything malformed or unexpected is -EPROTO; only allocation failures
 *    are -ENOMEM.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>

#include "internal.h"

#define XML_S3_NS "http://s3.amazonaws.com/doc/2006-03-01/"

/* S3 returns at most 1000 entries a page; a hundred times that is a hostile
 * or broken server, and refusing it bounds the memory one page can take. */
#define XML_MAX_ENTRIES 100000

/* ---------------------------------------------------------------- parsing */

static pthread_once_t xml_once = PTHREAD_ONCE_INIT;

static void xml_init_once(void)
{
	/* libxml2 is thread-safe only once its globals are set up; doing it
	 * lazily from several threads at once is not. */
	xmlInitParser();
}

static void xml_init(void)
{
	pthread_once(&xml_once, xml_init_once);
}

struct xml_read_state {
	bool saw_dtd;
};

/* Errors are reported by our return values; libxml2 must not print them. */
static void xml_silent_error(void *ctx, xmlErrorPtr e)
{
	(void)ctx;
	(void)e;
}

/* SAX internalSubset: called at "<!DOCTYPE name ...", before any entity
 * declaration of the internal subset has been read. */
static void xml_refuse_dtd(void *ctx, const xmlChar *name, const xmlChar *external_id,
                           const xmlChar *system_id)
{
	xmlParserCtxtPtr ctxt = ctx;
	struct xml_read_state *st = ctxt->_private;

	(void)name;
	(void)external_id;
	(void)system_id;
	st->saw_dtd = true;
	xmlStopParser(ctxt);
}

static bool xml_is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Parses buf into *doc (the caller frees it with xmlFreeDoc). */
static int xml_read(const char *buf, size_t len, xmlDocPtr *doc)
{
	struct xml_read_state st = {.saw_dtd = false};
	xmlStructuredErrorFunc saved_handler;
	void *saved_handler_ctx;
	xmlParserCtxtPtr ctxt;
	xmlDocPtr d;
	int r = 0;

	*doc = NULL;
	xml_init();
	if (!buf)
		return -EPROTO;
	/* S3 keeps a slow CompleteMultipartUpload alive by sending spaces
	 * before the document; an XML declaration after them would be
	 * ill-formed. */
	while (len && xml_is_space(*buf)) {
		buf++;
		len--;
	}
	if (len == 0 || len > INT_MAX)
		return -EPROTO;

	ctxt = xmlNewParserCtxt();
	if (!ctxt)
		return -ENOMEM;
	ctxt->_private = &st;
	ctxt->sax->internalSubset = xml_refuse_dtd;
	ctxt->sax->serror = xml_silent_error;
	/* Errors raised outside the parser context (character conversion)
	 * go to this thread's handler; silence it for the parse only. */
	saved_handler = xmlStructuredError;
	saved_handler_ctx = xmlStructuredErrorContext;
	xmlSetStructuredErrorFunc(NULL, xml_silent_error);
	/* S3 documents are UTF-8 only: decoding as UTF-8 whatever the
	 * declaration says keeps the other converters out of reach. */
	d = xmlCtxtReadMemory(ctxt, buf, (int)len, NULL, "UTF-8",
	                      XML_PARSE_NONET | XML_PARSE_NOBLANKS | XML_PARSE_NOCDATA |
	                              XML_PARSE_IGNORE_ENC | XML_PARSE_NOERROR |
	                              XML_PARSE_NOWARNING);
	xmlSetStructuredErrorFunc(saved_handler_ctx, saved_handler);
	if (ctxt->errNo == XML_ERR_NO_MEMORY)
		r = -ENOMEM;
	else if (!d || st.saw_dtd || !ctxt->wellFormed || d->intSubset || d->extSubset ||
	         !xmlDocGetRootElement(d))
		r = -EPROTO;
	if (r)
		xmlFreeDoc(d);
	else
		*doc = d;
	xmlFreeParserCtxt(ctxt);
	return r;
}

static bool xml_is(const xmlNode *n, const char *name)
{
	return n && n->type == XML_ELEMENT_NODE && strcmp((const char *)n->name, name) == 0;
}

static const xmlNode *xml_child(const xmlNode *parent, const char *name)
{
	for (const xmlNode *n = parent->children; n; n = n->next)
		if (xml_is(n, name))
			return n;
	return NULL;
}

/* The text of a simple element, malloc'd.  An element child means the
 * document is not what we think it is; entity references cannot occur since
 * no DTD is accepted, but are refused here too rather than expanded. */
static int xml_text(const xmlNode *el, char **out)
{
	size_t len = 0;
	char *s;

	*out = NULL;
	for (const xmlNode *n = el->children; n; n = n->next) {
		if (n->type == XML_TEXT_NODE || n->type == XML_CDATA_SECTION_NODE) {
			if (n->content)
				len += strlen((const char *)n->content);
		} else if (n->type != XML_COMMENT_NODE && n->type != XML_PI_NODE) {
			return -EPROTO;
		}
	}
	s = malloc(len + 1);
	if (!s)
		return -ENOMEM;
	len = 0;
	for (const xmlNode *n = el->children; n; n = n->next) {
		if ((n->type == XML_TEXT_NODE || n->type == XML_CDATA_SECTION_NODE) && n->content) {
			size_t l = strlen((const char *)n->content);
			memcpy(s + len, n->content, l);
			len += l;
		}
	}
	s[len] = '\0';
	*out = s;
	return 0;
}

/* Like xml_text(), for values whose surrounding whitespace means nothing
 * (numbers, dates, ETags, flags) - never for keys, which may begin or end
 * with spaces. */
static int xml_text_trimmed(const xmlNode *el, char **out)
{
	int r = xml_text(el, out);
	char *s, *e;

	if (r)
		return r;
	s = *out;
	e = s + strlen(s);
	while (e > s && xml_is_space(e[-1]))
		*--e = '\0';
	for (e = s; xml_is_space(*e); e++)
		;
	if (e != s)
		memmove(s, e, strlen(e) + 1);
	return 0;
}

/* The text of parent's first child `name`, or NULL (and 0) when absent. */
static int xml_child_text(const xmlNode *parent, const char *name, bool trim, char **out)
{
	const xmlNode *n = xml_child(parent, name);

	*out = NULL;
	if (!n)
		return 0;
	return trim ? xml_text_trimmed(n, out) : xml_text(n, out);
}

static int xml_parse_bool(const char *s, bool *out)
{
	if (strcasecmp(s, "true") == 0)
		*out = true;
	else if (strcasecmp(s, "false") == 0)
		*out = false;
	else
		return -EPROTO;
	return 0;
}

/* Decimal digits only; anything above `max` is refused. */
static int xml_parse_u64(const char *s, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;

	if (!*s)
		return -EPROTO;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -EPROTO;
		if (v > (max - (uint64_t)(*s - '0')) / 10)
			return -EPROTO;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*out = v;
	return 0;
}

static int xml_parse_time(const char *s, int64_t *out)
{
	int64_t t = s3_parse_iso8601(s);

	/* Some servers put an HTTP date in listings; take it rather than
	 * failing the whole page. */
	if (t < 0)
		t = s3_parse_http_date(s);
	if (t < 0)
		return -EPROTO;
	*out = t;
	return 0;
}

/* Stores an ETag in the form S3 normally sends, "\"...\"", adding the quotes
 * when a server left them out, so that ETags from listings, HEAD and PUT
 * compare equal. */
static int xml_etag_store(const char *raw, char etag[S3_ETAG_MAX])
{
	size_t len = strlen(raw);

	if (len >= 2 && raw[0] == '"' && raw[len - 1] == '"') {
		raw++;
		len -= 2;
	}
	if (len == 0 || len + 3 > S3_ETAG_MAX)
		return -EPROTO;
	for (size_t i = 0; i < len; i++)
		if (raw[i] == '"' || (unsigned char)raw[i] < 0x20)
			return -EPROTO;
	etag[0] = '"';
	memcpy(etag + 1, raw, len);
	etag[len + 1] = '"';
	etag[len + 2] = '\0';
	return 0;
}

static int xml_child_etag(const xmlNode *parent, char etag[S3_ETAG_MAX], bool required)
{
	char *s;
	int r = xml_child_text(parent, "ETag", true, &s);

	etag[0] = '\0';
	if (r)
		return r;
	if (!s)
		return required ? -EPROTO : 0;
	r = xml_etag_store(s, etag);
	free(s);
	return r;
}

/*
 * Decodes a value of an encoding-type=url response in place.
 *
 * AWS encodes these values the way HTML forms do: a space is sent as '+' and
 * a literal '+' as %2B (measured on AWS: key "a b.txt" -> "a+b.txt",
 * "a+b.txt" -> "a%2Bb.txt"), and botocore, hence the AWS CLI, decodes them
 * with urllib's unquote_plus (handlers.py _decode_list_object ->
 * compat.unquote_str).  A server that percent-encodes every reserved byte
 * (%20, %2B) never sends a bare '+', so it is decoded right as well.
 * s3_uri_decode() keeps '+', hence the first pass here.
 */
static int xml_url_decode(char **s)
{
	char *d;

	for (char *p = *s; *p; p++) {
		if (*p == '+') {
			*p = ' ';
		} else if (*p == '%') {
			/* Validated here so that a NULL from s3_uri_decode()
			 * can only mean ENOMEM. */
			if (!isxdigit((unsigned char)p[1]) || !isxdigit((unsigned char)p[2]) ||
			    (p[1] == '0' && p[2] == '0'))
				return -EPROTO;
		}
	}
	d = s3_uri_decode(*s);
	if (!d)
		return -ENOMEM;
	free(*s);
	*s = d;
	return 0;
}

/* A key or prefix: decoded when url-encoded, never empty. */
static int xml_key_text(const xmlNode *el, bool url, char **out)
{
	int r = xml_text(el, out);

	if (!r && url)
		r = xml_url_decode(out);
	if (!r && !**out)
		r = -EPROTO;
	if (r) {
		free(*out);
		*out = NULL;
	}
	return r;
}

/* Like xml_key_text() for parent's child `name`, which must be present. */
static int xml_child_key(const xmlNode *parent, const char *name, bool url, char **out)
{
	const xmlNode *n = xml_child(parent, name);

	*out = NULL;
	if (!n)
		return -EPROTO;
	return xml_key_text(n, url, out);
}

/* Copies into a fixed-size field of s3_error: cut at a UTF-8 character
 * boundary, control characters (newlines in messages) made spaces so that
 * the result is one log line. */
static void xml_copy_field(char *dst, size_t size, const char *src)
{
	size_t len = strlen(src);

	if (len >= size) {
		len = size - 1;
		while (len > 0 && ((unsigned char)src[len] & 0xC0) == 0x80)
			len--;
	}
	for (size_t i = 0; i < len; i++)
		dst[i] = (unsigned char)src[i] < 0x20 || src[i] == 0x7f ? ' ' : src[i];
	dst[len] = '\0';
}

/* Fills err from an <Error> element; fields the element lacks are left as
 * they were (e.g. a request id taken from the response headers). */
static int xml_fill_error(const xmlNode *el, s3_error *err, const char *key)
{
	static const char *const names[] = {"Code", "Message", "RequestId"};
	char *v[3] = {NULL, NULL, NULL};
	int r = 0;

	for (int i = 0; i < 3 && !r; i++)
		r = xml_child_text(el, names[i], true, &v[i]);
	if (!r && err) {
		if (v[0] && v[0][0])
			xml_copy_field(err->code, sizeof(err->code), v[0]);
		if (key) {
			/* DeleteResult: the message must say which key failed. */
			char *m = NULL;
			if (asprintf(&m, "%s: %s", key, v[1] ? v[1] : "") < 0) {
				r = -ENOMEM;
			} else {
				xml_copy_field(err->message, sizeof(err->message), m);
				free(m);
			}
		} else if (v[1] && v[1][0]) {
			xml_copy_field(err->message, sizeof(err->message), v[1]);
		}
		if (v[2] && v[2][0])
			xml_copy_field(err->request_id, sizeof(err->request_id), v[2]);
	}
	for (int i = 0; i < 3; i++)
		free(v[i]);
	return r;
}

/* ---------------------------------------------------------------- listing */

void s3_list_page_free(s3_list_page *page)
{
	if (!page)
		return;
	for (size_t i = 0; i < page->n_objects; i++) {
		free(page->objects[i].key);
		free(page->objects[i].owner_id);
		free(page->objects[i].owner_name);
		free(page->objects[i].storage_class);
	}
	free(page->objects);
	for (size_t i = 0; i < page->n_prefixes; i++)
		free(page->prefixes[i]);
	free(page->prefixes);
	free(page->next_token);
	memset(page, 0, sizeof(*page));
}

/* Makes room for one more element of `size` bytes in *arr (n used, *cap
 * allocated). */
static int xml_grow(void **arr, size_t n, size_t *cap, size_t size)
{
	size_t ncap;
	void *p;

	if (n < *cap)
		return 0;
	ncap = *cap ? *cap * 2 : 16;
	p = realloc(*arr, ncap * size);
	if (!p)
		return -ENOMEM;
	*arr = p;
	*cap = ncap;
	return 0;
}

static int xml_parse_object(const xmlNode *el, bool url, s3_object *o)
{
	char *s = NULL;
	int r;

	memset(o, 0, sizeof(*o));
	r = xml_child_key(el, "Key", url, &o->key);
	if (r)
		goto fail;

	/* A size must fit an off_t; more than that is nonsense. */
	r = xml_child_text(el, "Size", true, &s);
	if (!r && !s)
		r = -EPROTO;
	if (!r)
		r = xml_parse_u64(s, INT64_MAX, &o->size);
	free(s);
	if (r)
		goto fail;

	r = xml_child_etag(el, o->etag, false);
	if (r)
		goto fail;

	r = xml_child_text(el, "LastModified", true, &s);
	if (!r && s)
		r = xml_parse_time(s, &o->last_modified_ns);
	free(s);
	if (r)
		goto fail;

	r = xml_child_text(el, "StorageClass", true, &o->storage_class);
	if (r)
		goto fail;

	const xmlNode *owner = xml_child(el, "Owner");
	if (owner) {
		r = xml_child_text(owner, "ID", true, &o->owner_id);
		if (!r)
			r = xml_child_text(owner, "DisplayName", true, &o->owner_name);
		if (r)
			goto fail;
	}
	return 0;

fail:
	free(o->key);
	free(o->owner_id);
	free(o->owner_name);
	free(o->storage_class);
	memset(o, 0, sizeof(*o));
	return r;
}

/* EncodingType must be looked up first: AWS sends it after the Contents. */
static int xml_encoding_is_url(const xmlNode *root, bool *url)
{
	char *s;
	int r = xml_child_text(root, "EncodingType", true, &s);

	*url = false;
	if (r || !s)
		return r;
	if (strcasecmp(s, "url") == 0)
		*url = true;
	else if (s[0])
		r = -EPROTO; /* an encoding we cannot undo */
	free(s);
	return r;
}

int s3_xml_parse_list(const char *buf, size_t len, s3_list_page *out)
{
	size_t cap_objects = 0, cap_prefixes = 0;
	const xmlNode *root;
	xmlDocPtr doc;
	bool url;
	char *s;
	int r;

	memset(out, 0, sizeof(*out));
	r = xml_read(buf, len, &doc);
	if (r)
		return r;
	root = xmlDocGetRootElement(doc);
	if (!xml_is(root, "ListBucketResult")) {
		r = -EPROTO;
		goto out;
	}
	r = xml_encoding_is_url(root, &url);
	if (r)
		goto out;

	for (const xmlNode *n = root->children; n && !r; n = n->next) {
		if (n->type != XML_ELEMENT_NODE)
			continue;
		if (xml_is(n, "Contents")) {
			if (out->n_objects + out->n_prefixes >= XML_MAX_ENTRIES) {
				r = -EPROTO;
				break;
			}
			r = xml_grow((void **)&out->objects, out->n_objects, &cap_objects,
			             sizeof(*out->objects));
			if (!r)
				r = xml_parse_object(n, url, &out->objects[out->n_objects]);
			if (!r)
				out->n_objects++;
		} else if (xml_is(n, "CommonPrefixes")) {
			/* AWS sends one Prefix per CommonPrefixes; take every
			 * one in case a server groups them. */
			for (const xmlNode *p = n->children; p && !r; p = p->next) {
				if (!xml_is(p, "Prefix"))
					continue;
				if (out->n_objects + out->n_prefixes >= XML_MAX_ENTRIES) {
					r = -EPROTO;
					break;
				}
				r = xml_grow((void **)&out->prefixes, out->n_prefixes,
				             &cap_prefixes, sizeof(*out->prefixes));
				if (!r)
					r = xml_key_text(p, url, &out->prefixes[out->n_prefixes]);
				if (!r)
					out->n_prefixes++;
			}
		} else if (xml_is(n, "IsTruncated")) {
			r = xml_text_trimmed(n, &s);
			if (!r)
				r = xml_parse_bool(s, &out->truncated);
			free(s);
		} else if (xml_is(n, "NextContinuationToken")) {
			/* An opaque token: never url-encoded, passed back as is. */
			free(out->next_token);
			r = xml_text_trimmed(n, &out->next_token);
		}
	}
	if (!r && (!out->truncated || (out->next_token && !out->next_token[0]))) {
		free(out->next_token);
		out->next_token = NULL;
	}
out:
	xmlFreeDoc(doc);
	if (r)
		s3_list_page_free(out);
	return r;
}

/* ---------------------------------------------------------------- errors */

int s3_xml_parse_error(const char *buf, size_t len, s3_error *err)
{
	xmlDocPtr doc;
	int r = xml_read(buf, len, &doc);

	if (r)
		return r;
	if (xml_is(xmlDocGetRootElement(doc), "Error"))
		r = xml_fill_error(xmlDocGetRootElement(doc), err, NULL);
	else
		r = -EPROTO;
	xmlFreeDoc(doc);
	return r;
}

/* ---------------------------------------------------------------- multipart, copy, delete */

int s3_xml_parse_mpu_initiate(const char *buf, size_t len, char **upload_id)
{
	xmlDocPtr doc;
	const xmlNode *root;
	int r;

	*upload_id = NULL;
	r = xml_read(buf, len, &doc);
	if (r)
		return r;
	root = xmlDocGetRootElement(doc);
	if (!xml_is(root, "InitiateMultipartUploadResult"))
		r = -EPROTO;
	else
		r = xml_child_text(root, "UploadId", true, upload_id);
	if (!r && (!*upload_id || !**upload_id))
		r = -EPROTO;
	if (r) {
		free(*upload_id);
		*upload_id = NULL;
	}
	xmlFreeDoc(doc);
	return r;
}

int s3_xml_parse_etag_result(const char *buf, size_t len, char etag[S3_ETAG_MAX], s3_error *err)
{
	xmlDocPtr doc;
	const xmlNode *root;
	int r;

	etag[0] = '\0';
	r = xml_read(buf, len, &doc);
	if (r)
		return r;
	root = xmlDocGetRootElement(doc);
	if (xml_is(root, "CompleteMultipartUploadResult") || xml_is(root, "CopyObjectResult") ||
	    xml_is(root, "CopyPartResult")) {
		r = xml_child_etag(root, etag, true);
	} else if (xml_is(root, "Error")) {
		/* A 200 whose work failed after the status was sent. */
		r = xml_fill_error(root, err, NULL);
		if (!r)
			r = -EIO;
	} else {
		r = -EPROTO;
	}
	xmlFreeDoc(doc);
	return r;
}

int s3_xml_parse_delete_result(const char *buf, size_t len, s3_error *err)
{
	xmlDocPtr doc;
	const xmlNode *root;
	char *key = NULL;
	int r;

	r = xml_read(buf, len, &doc);
	if (r)
		return r;
	root = xmlDocGetRootElement(doc);
	if (xml_is(root, "Error")) {
		r = xml_fill_error(root, err, NULL);
		if (!r)
			r = -EIO;
	} else if (!xml_is(root, "DeleteResult")) {
		r = -EPROTO;
	} else {
		const xmlNode *e = xml_child(root, "Error");
		if (e) {
			r = xml_child_text(e, "Key", false, &key);
			if (!r)
				r = xml_fill_error(e, err, key ? key : "");
			if (!r)
				r = -EIO;
		}
	}
	free(key);
	xmlFreeDoc(doc);
	return r;
}

void s3_mpu_list_free(s3_mpu_list *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->n; i++) {
		free(l->uploads[i].key);
		free(l->uploads[i].upload_id);
	}
	free(l->uploads);
	l->uploads = NULL;
	l->n = 0;
}

static int xml_parse_upload(const xmlNode *el, bool url, s3_mpu_info *u)
{
	char *s = NULL;
	int r;

	memset(u, 0, sizeof(*u));
	r = xml_child_key(el, "Key", url, &u->key);
	if (!r)
		r = xml_child_text(el, "UploadId", true, &u->upload_id);
	if (!r && (!u->upload_id || !u->upload_id[0]))
		r = -EPROTO;
	if (!r)
		r = xml_child_text(el, "Initiated", true, &s);
	if (!r && s)
		r = xml_parse_time(s, &u->initiated_ns);
	free(s);
	if (r) {
		free(u->key);
		free(u->upload_id);
		memset(u, 0, sizeof(*u));
	}
	return r;
}

int s3_xml_parse_mpu_list(const char *buf, size_t len, s3_mpu_list *out, bool *truncated,
                          char **next_key_marker, char **next_upload_id_marker)
{
	const size_t n0 = out->n;
	size_t cap = out->n; /* unknown: grow from what is there */
	const xmlNode *root;
	xmlDocPtr doc;
	bool url;
	char *s;
	int r;

	*truncated = false;
	*next_key_marker = NULL;
	*next_upload_id_marker = NULL;
	r = xml_read(buf, len, &doc);
	if (r)
		return r;
	root = xmlDocGetRootElement(doc);
	if (!xml_is(root, "ListMultipartUploadsResult")) {
		r = -EPROTO;
		goto out;
	}
	r = xml_encoding_is_url(root, &url);
	for (const xmlNode *n = root ? root->children : NULL; n && !r; n = n->next) {
		if (xml_is(n, "Upload")) {
			if (out->n - n0 >= XML_MAX_ENTRIES) {
				r = -EPROTO;
				break;
			}
			r = xml_grow((void **)&out->uploads, out->n, &cap, sizeof(*out->uploads));
			if (!r)
				r = xml_parse_upload(n, url, &out->uploads[out->n]);
			if (!r)
				out->n++;
		} else if (xml_is(n, "IsTruncated")) {
			r = xml_text_trimmed(n, &s);
			if (!r)
				r = xml_parse_bool(s, truncated);
			free(s);
		} else if (xml_is(n, "NextKeyMarker")) {
			/* Sent back as key-marker, so decoded like a key. */
			free(*next_key_marker);
			r = xml_text(n, next_key_marker);
			if (!r && url)
				r = xml_url_decode(next_key_marker);
		} else if (xml_is(n, "NextUploadIdMarker")) {
			free(*next_upload_id_marker);
			r = xml_text_trimmed(n, next_upload_id_marker);
		}
	}
	/* An empty marker is no marker. */
	if (!r && *next_key_marker && !**next_key_marker) {
		free(*next_key_marker);
		*next_key_marker = NULL;
	}
	if (!r && *next_upload_id_marker && !**next_upload_id_marker) {
		free(*next_upload_id_marker);
		*next_upload_id_marker = NULL;
	}
out:
	xmlFreeDoc(doc);
	if (r) {
		/* Leave out as it was before this page. */
		for (size_t i = n0; i < out->n; i++) {
			free(out->uploads[i].key);
			free(out->uploads[i].upload_id);
		}
		out->n = n0;
		free(*next_key_marker);
		free(*next_upload_id_marker);
		*next_key_marker = NULL;
		*next_upload_id_marker = NULL;
		*truncated = false;
	}
	return r;
}

/* ---------------------------------------------------------------- building */

/* Whether s is UTF-8 made only of XML 1.0 characters (#x9 #xA #xD
 * #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF).  A key with anything else
 * (e.g. \x01) cannot be written in an XML request at all, not even as a
 * character reference; the caller must use a per-key request instead. */
static bool xml_is_xml_text(const char *str)
{
	const unsigned char *s = (const unsigned char *)str;

	while (*s) {
		uint32_t c;
		int more;

		if (*s < 0x80) {
			c = *s;
			more = 0;
		} else if ((*s & 0xE0) == 0xC0) {
			c = *s & 0x1F;
			more = 1;
		} else if ((*s & 0xF0) == 0xE0) {
			c = *s & 0x0F;
			more = 2;
		} else if ((*s & 0xF8) == 0xF0) {
			c = *s & 0x07;
			more = 3;
		} else {
			return false;
		}
		s++;
		for (int i = 0; i < more; i++, s++) {
			if ((*s & 0xC0) != 0x80)
				return false;
			c = c << 6 | (*s & 0x3F);
		}
		/* Overlong forms. */
		if ((more == 1 && c < 0x80) || (more == 2 && c < 0x800) ||
		    (more == 3 && c < 0x10000))
			return false;
		if (c < 0x20 && c != 0x9 && c != 0xA && c != 0xD)
			return false;
		if ((c >= 0xD800 && c <= 0xDFFF) || c == 0xFFFE || c == 0xFFFF || c > 0x10FFFF)
			return false;
	}
	return true;
}

/* A document with an empty root element in the S3 namespace (as AWS's own
 * examples and the SDKs send them). */
static xmlNodePtr xml_new_doc(const char *root_name, xmlDocPtr *doc)
{
	xmlNodePtr root;

	*doc = xmlNewDoc(BAD_CAST "1.0");
	if (!*doc)
		return NULL;
	root = xmlNewDocNode(*doc, NULL, BAD_CAST root_name, NULL);
	if (!root) {
		xmlFreeDoc(*doc);
		*doc = NULL;
		return NULL;
	}
	xmlDocSetRootElement(*doc, root);
	xmlSetNs(root, xmlNewNs(root, BAD_CAST XML_S3_NS, NULL));
	return root;
}

/* Serializes and frees doc; the result is malloc'd (not xmlMalloc'd) so that
 * callers free() it like every other string of the library. */
static char *xml_finish_doc(xmlDocPtr doc)
{
	xmlChar *mem = NULL;
	int size = 0;
	char *out = NULL;

	xmlDocDumpMemoryEnc(doc, &mem, &size, "UTF-8");
	xmlFreeDoc(doc);
	if (!mem || size < 0) {
		xmlFree(mem);
		errno = ENOMEM;
		return NULL;
	}
	out = malloc((size_t)size + 1);
	if (out) {
		memcpy(out, mem, (size_t)size);
		out[size] = '\0';
	} else {
		errno = ENOMEM;
	}
	xmlFree(mem);
	return out;
}

char *s3_xml_build_complete(const s3_part *parts, size_t n)
{
	xmlNodePtr root, part;
	xmlDocPtr doc;
	char num[16];

	xml_init();
	for (size_t i = 0; i < n; i++) {
		if (parts[i].number < 1 || parts[i].number > 10000 ||
		    memchr(parts[i].etag, '\0', S3_ETAG_MAX) == NULL ||
		    !xml_is_xml_text(parts[i].etag)) {
			errno = EINVAL;
			return NULL;
		}
	}
	root = xml_new_doc("CompleteMultipartUpload", &doc);
	if (!root)
		goto nomem;
	for (size_t i = 0; i < n; i++) {
		snprintf(num, sizeof(num), "%d", parts[i].number);
		/* A NULL namespace inherits the root's. */
		part = xmlNewChild(root, NULL, BAD_CAST "Part", NULL);
		if (!part || !xmlNewTextChild(part, NULL, BAD_CAST "PartNumber", BAD_CAST num) ||
		    !xmlNewTextChild(part, NULL, BAD_CAST "ETag", BAD_CAST parts[i].etag))
			goto nomem;
	}
	return xml_finish_doc(doc);

nomem:
	xmlFreeDoc(doc);
	errno = ENOMEM;
	return NULL;
}

char *s3_xml_build_delete(const char *const *keys, size_t n)
{
	xmlNodePtr root, obj;
	xmlDocPtr doc;

	xml_init();
	for (size_t i = 0; i < n; i++) {
		if (!keys[i][0] || !xml_is_xml_text(keys[i])) {
			errno = EINVAL;
			return NULL;
		}
	}
	root = xml_new_doc("Delete", &doc);
	if (!root || !xmlNewTextChild(root, NULL, BAD_CAST "Quiet", BAD_CAST "true"))
		goto nomem;
	for (size_t i = 0; i < n; i++) {
		/* xmlNewTextChild escapes & < > and writes \r as &#13; so
		 * that it survives the parser's line-end normalization. */
		obj = xmlNewChild(root, NULL, BAD_CAST "Object", NULL);
		if (!obj || !xmlNewTextChild(obj, NULL, BAD_CAST "Key", BAD_CAST keys[i]))
			goto nomem;
	}
	return xml_finish_doc(doc);

nomem:
	xmlFreeDoc(doc);
	errno = ENOMEM;
	return NULL;
}
