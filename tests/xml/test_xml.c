/*
 * test_xml.c - unit tests of s3/xml.c: listings as AWS, Swift s3api and
 * namespace-less servers send them, url-encoded keys, error documents, copy
 * and multipart results, DeleteResult, request bodies built and read back by
 * an independent libxml2 reader, and hostile input (entity bombs, external
 * entities, truncation, absurd values) that must fail with -EPROTO.
 *
 * With --iso8601-strict it instead checks s3_parse_iso8601() against inputs
 * it wrongly accepts today (registered as an expected failure).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "xml_extract.h"

static int failures;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);   \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

#define CHECK_INT(a, b)                                                                            \
	do {                                                                                       \
		long long a_ = (long long)(a), b_ = (long long)(b);                                \
		if (a_ != b_) {                                                                    \
			fprintf(stderr, "%s:%d: %s == %lld, expected %lld\n", __FILE__, __LINE__,  \
			        #a, a_, b_);                                                       \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

#define CHECK_STR(a, b)                                                                            \
	do {                                                                                       \
		const char *a_ = (a), *b_ = (b);                                                   \
		if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                           \
			fprintf(stderr, "%s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__,        \
			        __LINE__, #a, a_ ? a_ : "(null)", b_ ? b_ : "(null)");             \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

#define S3NS "http://s3.amazonaws.com/doc/2006-03-01/"

/* 2009-10-12T17:50:30.000Z */
#define T_2009 INT64_C(1255369830000000000)

static void *xmalloc(size_t n)
{
	void *p = malloc(n);

	if (!p) {
		perror("malloc");
		exit(2);
	}
	return p;
}

static int parse_list(const char *doc, s3_list_page *page)
{
	return s3_xml_parse_list(doc, strlen(doc), page);
}

/* ---------------------------------------------------------------- listings */

/* Shaped like the example of the ListObjectsV2 page of the S3 API reference. */
static const char aws_list[] =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        "<ListBucketResult xmlns=\"" S3NS "\">\n"
        "    <Name>bucket</Name>\n"
        "    <Prefix/>\n"
        "    <KeyCount>205</KeyCount>\n"
        "    <MaxKeys>1000</MaxKeys>\n"
        "    <IsTruncated>false</IsTruncated>\n"
        "    <Contents>\n"
        "        <Key>my-image.jpg</Key>\n"
        "        <LastModified>2009-10-12T17:50:30.000Z</LastModified>\n"
        "        <ETag>\"fba9dede5f27731c9771645a39863328\"</ETag>\n"
        "        <Size>434234</Size>\n"
        "        <StorageClass>STANDARD</StorageClass>\n"
        "    </Contents>\n"
        "    <Contents>\n"
        "        <Key>big/backup.tar</Key>\n"
        "        <LastModified>2024-02-29T23:59:59.250Z</LastModified>\n"
        "        <ETag>&quot;3858f62230ac3c915f300c664312c11f-9&quot;</ETag>\n"
        "        <Size>5368709120000</Size>\n"
        "        <StorageClass>GLACIER_IR</StorageClass>\n"
        "    </Contents>\n"
        "</ListBucketResult>\n";

static void test_list_aws_example(void)
{
	s3_list_page p;

	CHECK_INT(parse_list(aws_list, &p), 0);
	CHECK_INT(p.n_objects, 2);
	CHECK_INT(p.n_prefixes, 0);
	CHECK(!p.truncated);
	CHECK(p.next_token == NULL);
	if (p.n_objects == 2) {
		CHECK_STR(p.objects[0].key, "my-image.jpg");
		CHECK_INT(p.objects[0].size, 434234);
		CHECK_STR(p.objects[0].etag, "\"fba9dede5f27731c9771645a39863328\"");
		CHECK_INT(p.objects[0].last_modified_ns, T_2009);
		CHECK_STR(p.objects[0].storage_class, "STANDARD");
		CHECK(p.objects[0].owner_id == NULL && p.objects[0].owner_name == NULL);
		CHECK_STR(p.objects[1].key, "big/backup.tar");
		CHECK_INT(p.objects[1].size, INT64_C(5368709120000));
		/* &quot; is decoded by libxml2, the quotes are kept. */
		CHECK_STR(p.objects[1].etag, "\"3858f62230ac3c915f300c664312c11f-9\"");
		/* 2024-02-29T23:59:59 is 1709251199 */
		CHECK_INT(p.objects[1].last_modified_ns, INT64_C(1709251199250000000));
		CHECK_STR(p.objects[1].storage_class, "GLACIER_IR");
	}
	s3_list_page_free(&p);
	CHECK(p.objects == NULL && p.n_objects == 0 && p.next_token == NULL);
}

/* Swift's s3api middleware: single-quoted declaration, the S3 namespace,
 * url encoding, owner fields, %20 for spaces (Python's quote()). */
static const char swift_list[] =
        "<?xml version='1.0' encoding='UTF-8'?>\n"
        "<ListBucketResult xmlns=\"" S3NS "\"><Name>photos</Name><Prefix>dir%20one/</Prefix>"
        "<KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter>"
        "<EncodingType>url</EncodingType><IsTruncated>false</IsTruncated>"
        "<Contents><Key>dir%20one/file%2B1.txt</Key>"
        "<LastModified>2024-01-02T03:04:05.000Z</LastModified>"
        "<ETag>\"5d41402abc4b2a76b9719d911017c592\"</ETag><Size>5</Size>"
        "<Owner><ID>test:tester</ID><DisplayName>test:tester</DisplayName></Owner>"
        "<StorageClass>STANDARD</StorageClass></Contents>"
        "<CommonPrefixes><Prefix>dir%20one/sub%C3%BC/</Prefix></CommonPrefixes>"
        "</ListBucketResult>";

static void test_list_swift_s3api(void)
{
	s3_list_page p;

	CHECK_INT(parse_list(swift_list, &p), 0);
	CHECK_INT(p.n_objects, 1);
	CHECK_INT(p.n_prefixes, 1);
	if (p.n_objects == 1) {
		CHECK_STR(p.objects[0].key, "dir one/file+1.txt");
		CHECK_INT(p.objects[0].size, 5);
		CHECK_STR(p.objects[0].owner_id, "test:tester");
		CHECK_STR(p.objects[0].owner_name, "test:tester");
		CHECK_INT(p.objects[0].last_modified_ns, INT64_C(1704164645000000000));
	}
	if (p.n_prefixes == 1)
		CHECK_STR(p.prefixes[0], "dir one/sub\xc3\xbc/");
	s3_list_page_free(&p);
}

/* No namespace, no declaration, ETags without quotes (some emulators). */
static void test_list_no_namespace(void)
{
	static const char doc[] =
	        "<ListBucketResult><Name>b</Name><IsTruncated>false</IsTruncated>"
	        "<Contents><Key>Q&amp;A &lt;1&gt; \xc3\xbc.txt</Key><Size>0</Size>"
	        "<ETag>d41d8cd98f00b204e9800998ecf8427e</ETag>"
	        "<LastModified>2009-10-12T17:50:30Z</LastModified></Contents>"
	        "<Contents><Key>a+b</Key><Size>1</Size></Contents>"
	        "<Contents><Key> </Key><Size>2</Size></Contents>"
	        "<Contents><Key><![CDATA[<raw>&]]></Key><Size>3</Size></Contents>"
	        "<Contents><Key>split<!-- a comment -->key<?pi x?></Key><Size>4</Size></Contents>"
	        "</ListBucketResult>";
	s3_list_page p;

	CHECK_INT(parse_list(doc, &p), 0);
	CHECK_INT(p.n_objects, 5);
	if (p.n_objects == 5) {
		CHECK_STR(p.objects[0].key, "Q&A <1> \xc3\xbc.txt");
		CHECK_STR(p.objects[0].etag, "\"d41d8cd98f00b204e9800998ecf8427e\"");
		CHECK_INT(p.objects[0].last_modified_ns, T_2009);
		CHECK(p.objects[0].storage_class == NULL);
		/* Not url-encoded: '+' is a plus. */
		CHECK_STR(p.objects[1].key, "a+b");
		/* Missing ETag / LastModified are empty, not errors. */
		CHECK_STR(p.objects[1].etag, "");
		CHECK_INT(p.objects[1].last_modified_ns, 0);
		/* XML_PARSE_NOBLANKS must not eat a key made of a space. */
		CHECK_STR(p.objects[2].key, " ");
		CHECK_STR(p.objects[3].key, "<raw>&");
		/* Comments and processing instructions are not part of a key. */
		CHECK_STR(p.objects[4].key, "splitkey");
	}
	s3_list_page_free(&p);
}

/* encoding-type=url as AWS sends it: space as '+', '+' as %2B. */
static void test_list_url_encoding(void)
{
	static const char doc[] =
	        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	        "<ListBucketResult xmlns=\"" S3NS "\"><Name>b</Name><Prefix></Prefix>"
	        "<Contents><Key>a+b.txt</Key><Size>1</Size></Contents>"
	        "<Contents><Key>a%2Bb.txt</Key><Size>2</Size></Contents>"
	        "<Contents><Key>100%25.csv</Key><Size>3</Size></Contents>"
	        "<Contents><Key>%ED%95%9C%EA%B8%80/x.txt</Key><Size>4</Size></Contents>"
	        "<Contents><Key>Q%26A+%3C1%3E.txt</Key><Size>5</Size></Contents>"
	        "<Contents><Key>x%20y%0Az</Key><Size>6</Size></Contents>"
	        "<Contents><Key>%e2%82%ac</Key><Size>7</Size></Contents>"
	        "<CommonPrefixes><Prefix>run+books/</Prefix></CommonPrefixes>"
	        "<CommonPrefixes><Prefix>%ED%95%9C%EA%B8%80/</Prefix></CommonPrefixes>"
	        "<Delimiter>/</Delimiter><MaxKeys>1000</MaxKeys>"
	        "<EncodingType>url</EncodingType><KeyCount>9</KeyCount>"
	        "<IsTruncated>false</IsTruncated></ListBucketResult>";
	static const char *const keys[] = {
	        "a b.txt",     "a+b.txt", "100%.csv",     "\xed\x95\x9c\xea\xb8\x80/x.txt",
	        "Q&A <1>.txt", "x y\nz",  "\xe2\x82\xac",
	};
	s3_list_page p;

	CHECK_INT(parse_list(doc, &p), 0);
	CHECK_INT(p.n_objects, 7);
	for (size_t i = 0; i < p.n_objects && i < 7; i++) {
		CHECK_STR(p.objects[i].key, keys[i]);
		CHECK_INT(p.objects[i].size, i + 1);
	}
	CHECK_INT(p.n_prefixes, 2);
	if (p.n_prefixes == 2) {
		CHECK_STR(p.prefixes[0], "run books/");
		CHECK_STR(p.prefixes[1], "\xed\x95\x9c\xea\xb8\x80/");
	}
	s3_list_page_free(&p);
}

static void test_list_truncated_with_prefixes(void)
{
	static const char doc[] =
	        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	        "<ListBucketResult xmlns=\"" S3NS "\">"
	        "<Name>b</Name><Prefix>photos/</Prefix><KeyCount>3</KeyCount><MaxKeys>3</MaxKeys>"
	        "<Delimiter>/</Delimiter><IsTruncated>true</IsTruncated>"
	        "<Contents><Key>photos/a.jpg</Key><LastModified>2009-10-12T17:50:30.000Z"
	        "</LastModified><ETag>\"aa\"</ETag><Size>10</Size>"
	        "<Owner><ID>75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a</ID>"
	        "<DisplayName>mtd@amazon.com</DisplayName></Owner>"
	        "<StorageClass>STANDARD</StorageClass></Contents>"
	        "<CommonPrefixes><Prefix>photos/2006/</Prefix></CommonPrefixes>"
	        "<CommonPrefixes><Prefix>photos/2007/</Prefix></CommonPrefixes>"
	        "<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM="
	        "</NextContinuationToken></ListBucketResult>";
	s3_list_page p;

	CHECK_INT(parse_list(doc, &p), 0);
	CHECK(p.truncated);
	CHECK_STR(p.next_token, "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=");
	CHECK_INT(p.n_objects, 1);
	if (p.n_objects == 1) {
		CHECK_STR(p.objects[0].owner_id,
		          "75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a");
		CHECK_STR(p.objects[0].owner_name, "mtd@amazon.com");
	}
	CHECK_INT(p.n_prefixes, 2);
	if (p.n_prefixes == 2) {
		CHECK_STR(p.prefixes[0], "photos/2006/");
		CHECK_STR(p.prefixes[1], "photos/2007/");
	}
	s3_list_page_free(&p);

	/* An empty bucket. */
	CHECK_INT(parse_list("<ListBucketResult xmlns=\"" S3NS "\"><Name>b</Name>"
	                     "<KeyCount>0</KeyCount><IsTruncated>false</IsTruncated>"
	                     "</ListBucketResult>",
	                     &p),
	          0);
	CHECK(p.n_objects == 0 && p.n_prefixes == 0 && !p.truncated);
	s3_list_page_free(&p);
}

/* Documents that are not listings we can trust. */
static void test_list_rejects(void)
{
	static const char *const bad[] = {
	        /* wrong roots */
	        "<ListAllMyBucketsResult><Buckets/></ListAllMyBucketsResult>",
	        "<Error><Code>NoSuchBucket</Code></Error>",
	        "<ListBucketResultX/>",
	        /* missing or empty Key, missing Size */
	        "<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>",
	        "<ListBucketResult><Contents><Key></Key><Size>1</Size></Contents></"
	        "ListBucketResult>",
	        "<ListBucketResult><Contents><Key>k</Key></Contents></ListBucketResult>",
	        /* absurd sizes */
	        "<ListBucketResult><Contents><Key>k</Key><Size>-1</Size></Contents></"
	        "ListBucketResult>",
	        "<ListBucketResult><Contents><Key>k</Key><Size>9223372036854775808</Size></"
	        "Contents>"
	        "</ListBucketResult>",
	        "<ListBucketResult><Contents><Key>k</Key><Size>18446744073709551616</Size></"
	        "Contents>"
	        "</ListBucketResult>",
	        "<ListBucketResult><Contents><Key>k</Key><Size>12abc</Size></Contents>"
	        "</ListBucketResult>",
	        "<ListBucketResult><Contents><Key>k</Key><Size></Size></Contents></"
	        "ListBucketResult>",
	        "<ListBucketResult><Contents><Key>k</Key><Size>0x10</Size></Contents>"
	        "</ListBucketResult>",
	        /* bad url encoding */
	        "<ListBucketResult><EncodingType>url</EncodingType><Contents><Key>a%zz</Key>"
	        "<Size>1</Size></Contents></ListBucketResult>",
	        "<ListBucketResult><EncodingType>url</EncodingType><Contents><Key>a%00b</Key>"
	        "<Size>1</Size></Contents></ListBucketResult>",
	        "<ListBucketResult><EncodingType>url</EncodingType><Contents><Key>a%4</Key>"
	        "<Size>1</Size></Contents></ListBucketResult>",
	        "<ListBucketResult><EncodingType>base64</EncodingType></ListBucketResult>",
	        "<ListBucketResult><EncodingType>url</EncodingType><CommonPrefixes><Prefix>%</"
	        "Prefix>"
	        "</CommonPrefixes></ListBucketResult>",
	        /* bad flags, dates, ETags */
	        "<ListBucketResult><IsTruncated>yes</IsTruncated></ListBucketResult>",
	        "<ListBucketResult><Contents><Key>k</Key><Size>1</Size>"
	        "<LastModified>yesterday</LastModified></Contents></ListBucketResult>",
	        "<ListBucketResult><Contents><Key>k</Key><Size>1</Size><ETag>\"a\"b\"</ETag>"
	        "</Contents></ListBucketResult>",
	        "<ListBucketResult><Contents><Key>k</Key><Size>1</Size><ETag>\"\"</ETag>"
	        "</Contents></ListBucketResult>",
	        "<ListBucketResult><Contents><Key>k</Key><Size>1</Size><ETag>"
	        "0123456789012345678901234567890123456789012345678901234567890123456789012345678"
	        "</ETag></Contents></ListBucketResult>",
	        /* an element where text belongs */
	        "<ListBucketResult><Contents><Key>k<b/></Key><Size>1</Size></Contents>"
	        "</ListBucketResult>",
	        /* not well-formed */
	        "<ListBucketResult><Contents><Key>k</Key><Size>1</Size></Contents>",
	        "<ListBucketResult></ListBucketResult><ListBucketResult/>",
	        "<ListBucketResult/>trailing",
	        "<ListBucketResult><Contents><Key>&nosuch;</Key><Size>1</Size></Contents>"
	        "</ListBucketResult>",
	        "<ListBucketResult><Contents><Key>\xff\xfe</Key><Size>1</Size></Contents>"
	        "</ListBucketResult>",
	        "<?xml version=\"1.0\"?>",
	        "{\"Contents\": []}",
	        "<html><body><h1>502 Bad Gateway</h1></body></html",
	        "",
	        "   \n\t ",
	};
	s3_list_page p;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&p, 0x5a, sizeof(p));
		int r = parse_list(bad[i], &p);
		if (r != -EPROTO)
			fprintf(stderr, "bad list document %zu: %d\n", i, r);
		CHECK_INT(r, -EPROTO);
		/* The page is left empty, safe to free again. */
		CHECK(p.objects == NULL && p.n_objects == 0 && p.prefixes == NULL &&
		      p.next_token == NULL);
		s3_list_page_free(&p);
	}

	/* A NUL byte inside the buffer. */
	static const char nul[] = "<ListBucketResult><Name>a\0b</Name></ListBucketResult>";
	CHECK_INT(s3_xml_parse_list(nul, sizeof(nul) - 1, &p), -EPROTO);
	/* NULL buffer */
	CHECK_INT(s3_xml_parse_list(NULL, 0, &p), -EPROTO);

	/* The largest size that fits an off_t is accepted. */
	CHECK_INT(parse_list("<ListBucketResult><Contents><Key>k</Key>"
	                     "<Size> 9223372036854775807 </Size></Contents></ListBucketResult>",
	                     &p),
	          0);
	if (p.n_objects == 1)
		CHECK(p.objects[0].size == INT64_MAX);
	s3_list_page_free(&p);
}

/* Every prefix of a valid document is invalid, and must fail cleanly. */
static void test_list_truncated_input(void)
{
	size_t full = strlen(aws_list);
	s3_list_page p;
	int bad = 0;

	/* The document ends in "</ListBucketResult>\n". */
	for (size_t len = 0; len < full - 1; len++) {
		int r = s3_xml_parse_list(aws_list, len, &p);
		if (r != -EPROTO) {
			fprintf(stderr, "prefix of %zu bytes: %d\n", len, r);
			bad++;
		}
		s3_list_page_free(&p);
	}
	CHECK_INT(bad, 0);
}

/* ---------------------------------------------------------------- hostile */

static const char billion_laughs[] =
        "<?xml version=\"1.0\"?>\n"
        "<!DOCTYPE lolz [\n"
        " <!ENTITY lol \"lol\">\n"
        " <!ENTITY lol1 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">\n"
        " <!ENTITY lol2 \"&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;\">\n"
        " <!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\">\n"
        " <!ENTITY lol4 \"&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;\">\n"
        " <!ENTITY lol5 \"&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;\">\n"
        " <!ENTITY lol6 \"&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;\">\n"
        " <!ENTITY lol7 \"&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;\">\n"
        " <!ENTITY lol8 \"&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;\">\n"
        " <!ENTITY lol9 \"&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;\">\n"
        "]>\n"
        "<Error><Code>&lol9;</Code><Message>&lol9;</Message></Error>";

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_entity_bomb(void)
{
	s3_error err;
	double t0 = now_s();

	memset(&err, 0, sizeof(err));
	CHECK_INT(s3_xml_parse_error(billion_laughs, strlen(billion_laughs), &err), -EPROTO);
	CHECK_STR(err.code, "");
	CHECK_STR(err.message, "");
	/* Refused at the DOCTYPE, not after 3 GB of "lol". */
	CHECK(now_s() - t0 < 1.0);

	/* Quadratic blowup: one big entity referenced many times. */
	size_t big = 50000, refs = 50000;
	char *doc = xmalloc(big + refs * 3 + 200), *o = doc;
	o += sprintf(o, "<!DOCTYPE x [<!ENTITY a \"");
	memset(o, 'a', big);
	o += big;
	o += sprintf(o, "\">]><ListBucketResult><Name>");
	for (size_t i = 0; i < refs; i++)
		o += sprintf(o, "&a;");
	sprintf(o, "</Name></ListBucketResult>");
	s3_list_page p;
	t0 = now_s();
	CHECK_INT(parse_list(doc, &p), -EPROTO);
	CHECK(now_s() - t0 < 1.0);
	free(doc);
}

/* External entities, an external DTD and an external parameter entity all
 * point at a local TCP listener: nothing may connect to it, and a local
 * file's content must not appear anywhere. */
static void test_external_entities(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t salen = sizeof(sa);
	char path[] = "/tmp/bucketfs-xxe-XXXXXX";
	char doc[1024];
	s3_list_page p;
	s3_error err;
	int ls, fd;

	ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	CHECK(ls >= 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CHECK(bind(ls, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	CHECK(listen(ls, 8) == 0);
	CHECK(getsockname(ls, (struct sockaddr *)&sa, &salen) == 0);
	int port = ntohs(sa.sin_port);

	fd = mkstemp(path);
	CHECK(fd >= 0);
	CHECK(write(fd, "TOPSECRET", 9) == 9);
	close(fd);

	snprintf(doc, sizeof(doc),
	         "<?xml version=\"1.0\"?><!DOCTYPE ListBucketResult [<!ENTITY xxe SYSTEM "
	         "\"file://%s\">]><ListBucketResult><Contents><Key>&xxe;</Key><Size>1</Size>"
	         "</Contents></ListBucketResult>",
	         path);
	memset(&p, 0, sizeof(p));
	CHECK_INT(parse_list(doc, &p), -EPROTO);
	CHECK(p.n_objects == 0);

	snprintf(doc, sizeof(doc),
	         "<!DOCTYPE Error [<!ENTITY xxe SYSTEM \"http://127.0.0.1:%d/secret\">]>"
	         "<Error><Code>&xxe;</Code><Message>m</Message></Error>",
	         port);
	memset(&err, 0, sizeof(err));
	CHECK_INT(s3_xml_parse_error(doc, strlen(doc), &err), -EPROTO);
	CHECK_STR(err.code, "");

	snprintf(doc, sizeof(doc),
	         "<?xml version=\"1.0\"?><!DOCTYPE ListBucketResult SYSTEM "
	         "\"http://127.0.0.1:%d/evil.dtd\"><ListBucketResult/>",
	         port);
	CHECK_INT(parse_list(doc, &p), -EPROTO);

	snprintf(doc, sizeof(doc),
	         "<!DOCTYPE x [<!ENTITY %% ext SYSTEM \"http://127.0.0.1:%d/p.dtd\"> %%ext;]>"
	         "<InitiateMultipartUploadResult><UploadId>u</UploadId>"
	         "</InitiateMultipartUploadResult>",
	         port);
	char *id = (char *)1;
	CHECK_INT(s3_xml_parse_mpu_initiate(doc, strlen(doc), &id), -EPROTO);
	CHECK(id == NULL);

	/* Give a stray connection time to arrive, then make sure none did. */
	usleep(50000);
	int c = accept(ls, NULL, NULL);
	CHECK(c < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
	if (c >= 0)
		close(c);
	close(ls);
	unlink(path);
}

static void test_depth_and_count_limits(void)
{
	s3_list_page p;
	size_t depth = 5000;
	char *doc = xmalloc(depth * 7 + 100), *o = doc;

	/* Far beyond libxml2's default depth limit (no XML_PARSE_HUGE). */
	o = stpcpy(o, "<ListBucketResult>");
	for (size_t i = 0; i < depth; i++)
		o = stpcpy(o, "<a>");
	for (size_t i = 0; i < depth; i++)
		o = stpcpy(o, "</a>");
	stpcpy(o, "</ListBucketResult>");
	CHECK_INT(parse_list(doc, &p), -EPROTO);
	free(doc);

	/* 100,000 entries are accepted, one more is refused. */
	static const char entry[] = "<CommonPrefixes><Prefix>p/</Prefix></CommonPrefixes>";
	size_t n = 100001;
	doc = xmalloc(n * sizeof(entry) + 100);
	for (int extra = 0; extra <= 1; extra++) {
		o = doc;
		o = stpcpy(o, "<ListBucketResult>");
		for (size_t i = 0; i < n - 1 + (size_t)extra; i++) {
			memcpy(o, entry, sizeof(entry) - 1);
			o += sizeof(entry) - 1;
		}
		stpcpy(o, "</ListBucketResult>");
		int r = parse_list(doc, &p);
		CHECK_INT(r, extra ? -EPROTO : 0);
		if (!extra)
			CHECK_INT(p.n_prefixes, 100000);
		s3_list_page_free(&p);
	}
	free(doc);
}

/* S3 sends UTF-8 only; a declaration saying otherwise is not followed, so
 * no other converter ever sees server bytes. */
static void test_encoding_declarations(void)
{
	static const char utf16_decl[] = "<?xml version=\"1.0\" encoding=\"UTF-16\"?>"
	                                 "<Error><Code>SlowDown</Code></Error>";
	static const char latin1_byte[] = "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>"
	                                  "<Error><Code>caf\xe9</Code></Error>";
	static const char utf16_doc[] = "\xff\xfe<\0E\0r\0r\0o\0r\0/\0>\0";
	s3_error err;

	memset(&err, 0, sizeof(err));
	CHECK_INT(s3_xml_parse_error(utf16_decl, strlen(utf16_decl), &err), 0);
	CHECK_STR(err.code, "SlowDown");
	memset(&err, 0, sizeof(err));
	CHECK_INT(s3_xml_parse_error(latin1_byte, strlen(latin1_byte), &err), -EPROTO);
	CHECK_INT(s3_xml_parse_error(utf16_doc, sizeof(utf16_doc) - 1, &err), -EPROTO);
	CHECK_STR(err.code, "");
}

/* A library must not write to the daemon's stderr, whatever it is fed. */
static void test_silence(void)
{
	static const char *const docs[] = {
	        "<ListBucketResult><Contents><Key>k</Key>",
	        "<?xml version=\"1.0\" encoding=\"SHIFT_JIS\"?><Error><Code>\x81\xff</Code>",
	        "<Error><Code>&undefined;</Code></Error>",
	        "<Error xmlns:a=\"urn:x\" a:b=\"1\" a:b=\"2\"/>",
	        "\xef\xbb\xbf\xef\xbb\xbf<Error/>",
	        "<!-- unterminated",
	};
	char path[] = "/tmp/bucketfs-stderr-XXXXXX";
	int fd = mkstemp(path), saved = dup(2);
	s3_list_page p;
	s3_error err;

	CHECK(fd >= 0 && saved >= 0);
	fflush(stderr);
	dup2(fd, 2);
	for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
		memset(&err, 0, sizeof(err));
		(void)!s3_xml_parse_error(docs[i], strlen(docs[i]), &err);
		(void)!s3_xml_parse_list(docs[i], strlen(docs[i]), &p);
		s3_list_page_free(&p);
	}
	(void)!s3_xml_parse_error(billion_laughs, strlen(billion_laughs), &err);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	off_t written = lseek(fd, 0, SEEK_END);
	close(fd);
	unlink(path);
	CHECK_INT(written, 0);
}

/* ---------------------------------------------------------------- errors */

static void test_error_documents(void)
{
	static const char nosuchkey[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	                                "<Error>\n"
	                                "  <Code>NoSuchKey</Code>\n"
	                                "  <Message>The specified key does not exist.</Message>\n"
	                                "  <Key>dir/missing.txt</Key>\n"
	                                "  <RequestId>4442587FB7D0A2F9</RequestId>\n"
	                                "  "
	                                "<HostId>eftixk72aD6Ap51TnqcoF8eFidJG9Z/"
	                                "2mkiDFu8yU9AS1ed4OpIszj7UDNEHGran</HostId>\n"
	                                "</Error>";
	static const char slowdown[] =
	        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	        "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
	        "<RequestId>TX1234</RequestId><HostId>h</HostId></Error>";
	s3_error err;

	memset(&err, 0, sizeof(err));
	err.http_status = 404;
	CHECK_INT(s3_xml_parse_error(nosuchkey, strlen(nosuchkey), &err), 0);
	CHECK_STR(err.code, "NoSuchKey");
	CHECK_STR(err.message, "The specified key does not exist.");
	CHECK_STR(err.request_id, "4442587FB7D0A2F9");
	CHECK_INT(err.http_status, 404);
	CHECK_INT(s3_error_errno(&err), ENOENT);

	memset(&err, 0, sizeof(err));
	err.http_status = 503;
	CHECK_INT(s3_xml_parse_error(slowdown, strlen(slowdown), &err), 0);
	CHECK_STR(err.code, "SlowDown");
	CHECK_STR(err.message, "Please reduce your request rate.");
	CHECK_STR(err.request_id, "TX1234");

	/* A request id taken from the headers survives a body without one. */
	memset(&err, 0, sizeof(err));
	strcpy(err.request_id, "from-header");
	static const char noid[] = "<Error><Code>AccessDenied</Code><Message>Access Denied"
	                           "</Message></Error>";
	CHECK_INT(s3_xml_parse_error(noid, strlen(noid), &err), 0);
	CHECK_STR(err.code, "AccessDenied");
	CHECK_STR(err.request_id, "from-header");

	/* Over-long fields are cut at a character boundary, newlines become
	 * spaces. */
	char doc[2048], *o = doc;
	o += sprintf(o, "<Error><Code>");
	for (int i = 0; i < 100; i++)
		*o++ = 'C';
	o += sprintf(o, "</Code><Message>line1\nline2");
	for (int i = 0; i < 243; i++)
		*o++ = 'm';
	/* bytes 254 and 255 of the message: a 2-byte character */
	o += sprintf(o, "\xc3\xa9 and more text</Message><RequestId>");
	for (int i = 0; i < 300; i++)
		*o++ = 'R';
	sprintf(o, "</RequestId></Error>");
	memset(&err, 0, sizeof(err));
	CHECK_INT(s3_xml_parse_error(doc, strlen(doc), &err), 0);
	CHECK_INT(strlen(err.code), 63);
	CHECK_INT(strlen(err.message), 254);
	CHECK(strncmp(err.message, "line1 line2mmm", 14) == 0);
	CHECK(strchr(err.message, '\n') == NULL);
	CHECK_INT(strlen(err.request_id), 127);

	/* Not error documents. */
	static const char *const bad[] = {
	        "<ListBucketResult/>",
	        "<html><body>Service Unavailable</body></html>",
	        "Service Unavailable",
	        "<Error><Code>X</Code>",
	        "",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&err, 0, sizeof(err));
		CHECK_INT(s3_xml_parse_error(bad[i], strlen(bad[i]), &err), -EPROTO);
		CHECK_STR(err.code, "");
	}
}

/* ---------------------------------------------------------------- results */

static void test_etag_results(void)
{
	static const char copy[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	                           "<CopyObjectResult>\n"
	                           "   <LastModified>2009-10-28T22:32:00</LastModified>\n"
	                           "   <ETag>\"9b2cf535f27731c974343645a3985328\"</ETag>\n"
	                           "</CopyObjectResult>";
	static const char copy_part[] =
	        "<CopyPartResult xmlns=\"" S3NS "\"><LastModified>2011-04-11T20:34:56.000Z"
	        "</LastModified><ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag>"
	        "</CopyPartResult>";
	/* Keep-alive spaces before the document, as a slow complete sends. */
	static const char complete[] =
	        "\n     \n<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	        "<CompleteMultipartUploadResult xmlns=\"" S3NS "\">"
	        "<Location>https://b.s3.amazonaws.com/big.tar</Location><Bucket>b</Bucket>"
	        "<Key>big.tar</Key><ETag>\"3858f62230ac3c915f300c664312c11f-9\"</ETag>"
	        "</CompleteMultipartUploadResult>";
	static const char complete_error[] =
	        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\n"
	        "<Error><Code>InternalError</Code><Message>We encountered an internal error. "
	        "Please try again.</Message><RequestId>656c76696e6727732072657175657374</RequestId>"
	        "<HostId>Uuag1LuByRx9e6j5Onimru9pO4ZVKnJ2Qz7/C1NPcfTWAtRPfTaOFg==</HostId></Error>";
	char etag[S3_ETAG_MAX];
	s3_error err;

	memset(&err, 0, sizeof(err));
	CHECK_INT(s3_xml_parse_etag_result(copy, strlen(copy), etag, &err), 0);
	CHECK_STR(etag, "\"9b2cf535f27731c974343645a3985328\"");
	CHECK_INT(s3_xml_parse_etag_result(copy_part, strlen(copy_part), etag, &err), 0);
	CHECK_STR(etag, "\"9b2cf535f27731c974343645a3985328\"");
	CHECK_INT(s3_xml_parse_etag_result(complete, strlen(complete), etag, &err), 0);
	CHECK_STR(etag, "\"3858f62230ac3c915f300c664312c11f-9\"");
	CHECK_STR(err.code, "");

	err.http_status = 200;
	CHECK_INT(s3_xml_parse_etag_result(complete_error, strlen(complete_error), etag, &err),
	          -EIO);
	CHECK_STR(err.code, "InternalError");
	CHECK_STR(err.message, "We encountered an internal error. Please try again.");
	CHECK_STR(err.request_id, "656c76696e6727732072657175657374");
	CHECK_STR(etag, "");
	/* A NULL err is allowed. */
	CHECK_INT(s3_xml_parse_etag_result(complete_error, strlen(complete_error), etag, NULL),
	          -EIO);

	static const char *const bad[] = {
	        "<CopyObjectResult><LastModified>2009-10-28T22:32:00</LastModified>"
	        "</CopyObjectResult>",
	        "<CopyObjectResult><ETag></ETag></CopyObjectResult>",
	        "<InitiateMultipartUploadResult><UploadId>x</UploadId>"
	        "</InitiateMultipartUploadResult>",
	        "<CompleteMultipartUploadResult><ETag>\"abc\"",
	        "",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK_INT(s3_xml_parse_etag_result(bad[i], strlen(bad[i]), etag, &err), -EPROTO);
}

static void test_mpu_initiate(void)
{
	static const char doc[] =
	        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	        "<InitiateMultipartUploadResult xmlns=\"" S3NS "\">\n"
	        "  <Bucket>example-bucket</Bucket>\n  <Key>example-object</Key>\n"
	        "  "
	        "<UploadId>VXBsb2FkIElEIGZvciA2aWWpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA</UploadId>\n"
	        "</InitiateMultipartUploadResult>";
	char *id = NULL;

	CHECK_INT(s3_xml_parse_mpu_initiate(doc, strlen(doc), &id), 0);
	CHECK_STR(id, "VXBsb2FkIElEIGZvciA2aWWpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA");
	free(id);

	static const char blank_id[] = "<InitiateMultipartUploadResult><UploadId> </UploadId>"
	                               "</InitiateMultipartUploadResult>";
	static const char *const bad[] = {
	        "<InitiateMultipartUploadResult><Bucket>b</Bucket></InitiateMultipartUploadResult>",
	        blank_id,
	        "<Error><Code>AccessDenied</Code></Error>",
	        "<InitiateMultipartUploadResult><UploadId>x</UploadId>",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		id = (char *)1;
		CHECK_INT(s3_xml_parse_mpu_initiate(bad[i], strlen(bad[i]), &id), -EPROTO);
		CHECK(id == NULL);
	}
}

static void test_delete_result(void)
{
	static const char ok[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	                         "<DeleteResult xmlns=\"" S3NS "\">\n"
	                         "  <Deleted><Key>sample1.txt</Key></Deleted>\n"
	                         "  <Deleted><Key>sample2.txt</Key></Deleted>\n"
	                         "</DeleteResult>";
	static const char quiet[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	                            "<DeleteResult xmlns=\"" S3NS "\"></DeleteResult>";
	static const char failed[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	                             "<DeleteResult xmlns=\"" S3NS "\">\n"
	                             "  <Deleted><Key>sample1.txt</Key></Deleted>\n"
	                             "  <Error><Key>Q&amp;A.txt</Key><Code>AccessDenied</Code>"
	                             "<Message>Access Denied</Message></Error>\n"
	                             "  <Error><Key>second.txt</Key><Code>InternalError</Code>"
	                             "<Message>oops</Message></Error>\n"
	                             "</DeleteResult>";
	s3_error err;

	memset(&err, 0, sizeof(err));
	CHECK_INT(s3_xml_parse_delete_result(ok, strlen(ok), &err), 0);
	CHECK_INT(s3_xml_parse_delete_result(quiet, strlen(quiet), &err), 0);
	CHECK_STR(err.code, "");
	CHECK_INT(s3_xml_parse_delete_result(failed, strlen(failed), &err), -EIO);
	CHECK_STR(err.code, "AccessDenied");
	CHECK_STR(err.message, "Q&A.txt: Access Denied");
	CHECK_INT(s3_error_errno(&err), EACCES);

	static const char *const bad[] = {"<DeleteResult>", "<Deleted/>", ""};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK_INT(s3_xml_parse_delete_result(bad[i], strlen(bad[i]), &err), -EPROTO);
}

static void test_mpu_list(void)
{
	static const char page1[] =
	        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	        "<ListMultipartUploadsResult xmlns=\"" S3NS "\">\n"
	        "  "
	        "<Bucket>bucket</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>\n"
	        "  <NextKeyMarker>my+movie.m2ts</NextKeyMarker>\n"
	        "  <NextUploadIdMarker>YW55IGlkZWEgd2h5IGVsdmluZydzIHVwbG9hZCBmYWlsZWQ"
	        "</NextUploadIdMarker>\n"
	        "  <EncodingType>url</EncodingType><MaxUploads>2</MaxUploads>\n"
	        "  <IsTruncated>true</IsTruncated>\n"
	        "  <Upload><Key>my+divisor</Key>"
	        "<UploadId>XMgbGlrZSBlbHZpbmcncyBub3QgaGF2aW5nIG11Y2ggbHVjaw</UploadId>"
	        "<Initiator><ID>arn:aws:iam::111122223333:user/user1-11111a31-17b5-4fb7-9df5"
	        "-b111111f13de</ID><DisplayName>user1</DisplayName></Initiator>"
	        "<StorageClass>STANDARD</StorageClass>"
	        "<Initiated>2009-10-12T17:50:30.000Z</Initiated></Upload>\n"
	        "  <Upload><Key>my%2Bmovie.m2ts</Key>"
	        "<UploadId>VXBsb2FkIElEIGZvciBlbHZpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA</UploadId>"
	        "<Initiated>2010-11-10T20:48:33.000Z</Initiated></Upload>\n"
	        "</ListMultipartUploadsResult>";
	static const char page2[] = "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated>"
	                            "<Upload><Key>z</Key><UploadId>u3</UploadId></Upload>"
	                            "</ListMultipartUploadsResult>";
	static const char bad_page[] =
	        "<ListMultipartUploadsResult><Upload><Key>ok</Key><UploadId>u4</UploadId></Upload>"
	        "<Upload><Key>missing-id</Key></Upload></ListMultipartUploadsResult>";
	s3_mpu_list l = {0};
	char *km = NULL, *um = NULL;
	bool trunc = false;

	CHECK_INT(s3_xml_parse_mpu_list(page1, strlen(page1), &l, &trunc, &km, &um), 0);
	CHECK(trunc);
	CHECK_STR(km, "my movie.m2ts");
	CHECK_STR(um, "YW55IGlkZWEgd2h5IGVsdmluZydzIHVwbG9hZCBmYWlsZWQ");
	CHECK_INT(l.n, 2);
	if (l.n == 2) {
		CHECK_STR(l.uploads[0].key, "my divisor");
		CHECK_STR(l.uploads[0].upload_id,
		          "XMgbGlrZSBlbHZpbmcncyBub3QgaGF2aW5nIG11Y2ggbHVjaw");
		CHECK_INT(l.uploads[0].initiated_ns, T_2009);
		CHECK_STR(l.uploads[1].key, "my+movie.m2ts");
	}
	free(km);
	free(um);

	/* The second page appends. */
	CHECK_INT(s3_xml_parse_mpu_list(page2, strlen(page2), &l, &trunc, &km, &um), 0);
	CHECK(!trunc);
	CHECK(km == NULL && um == NULL);
	CHECK_INT(l.n, 3);
	if (l.n == 3) {
		CHECK_STR(l.uploads[2].key, "z");
		CHECK_STR(l.uploads[2].upload_id, "u3");
		CHECK_INT(l.uploads[2].initiated_ns, 0);
		CHECK_STR(l.uploads[0].key, "my divisor");
	}

	/* A bad page leaves the list as it was. */
	CHECK_INT(s3_xml_parse_mpu_list(bad_page, strlen(bad_page), &l, &trunc, &km, &um), -EPROTO);
	CHECK_INT(l.n, 3);
	CHECK(km == NULL && um == NULL && !trunc);
	CHECK_INT(s3_xml_parse_mpu_list("<ListBucketResult/>", 19, &l, &trunc, &km, &um), -EPROTO);
	CHECK_INT(l.n, 3);
	s3_mpu_list_free(&l);
	CHECK(l.uploads == NULL && l.n == 0);

	/* Empty */
	static const char none[] = "<ListMultipartUploadsResult xmlns=\"" S3NS "\">"
	                           "<Bucket>b</Bucket><IsTruncated>false</IsTruncated>"
	                           "</ListMultipartUploadsResult>";
	CHECK_INT(s3_xml_parse_mpu_list(none, strlen(none), &l, &trunc, &km, &um), 0);
	CHECK(l.n == 0 && !trunc);
	s3_mpu_list_free(&l);
}

/* ---------------------------------------------------------------- building */

static void test_build_complete(void)
{
	s3_part parts[3] = {
	        {1, "\"a54357aff0632cce46d942af68356b38\""},
	        {2, "\"0c78aef83f66abc1fa1e8477f296d394\""},
	        {10000, "\"acbd18db4cc2f85cedef654fccc4a4d8\""},
	};
	char **texts, *root, *ns;
	size_t n;
	char *doc = s3_xml_build_complete(parts, 3);

	CHECK(doc != NULL);
	if (!doc)
		return;
	CHECK(strstr(doc, "<ETag>\"a54357aff0632cce46d942af68356b38\"</ETag>") != NULL);
	CHECK_INT(xml_extract(doc, "PartNumber", &texts, &n, &root, &ns), 0);
	CHECK_STR(root, "CompleteMultipartUpload");
	CHECK_STR(ns, S3NS);
	CHECK_INT(n, 3);
	if (n == 3) {
		CHECK_STR(texts[0], "1");
		CHECK_STR(texts[1], "2");
		CHECK_STR(texts[2], "10000");
	}
	xml_extract_free(texts, n, root, ns);
	CHECK_INT(xml_extract(doc, "ETag", &texts, &n, &root, &ns), 0);
	CHECK_INT(n, 3);
	for (size_t i = 0; i < n && i < 3; i++)
		CHECK_STR(texts[i], parts[i].etag);
	xml_extract_free(texts, n, root, ns);
	CHECK_INT(xml_extract(doc, "Part", &texts, &n, &root, &ns), 0);
	CHECK_INT(n, 3);
	xml_extract_free(texts, n, root, ns);
	free(doc);

	parts[1].number = 0;
	errno = 0;
	CHECK(s3_xml_build_complete(parts, 3) == NULL && errno == EINVAL);
	parts[1].number = 10001;
	CHECK(s3_xml_build_complete(parts, 3) == NULL && errno == EINVAL);
}

static void test_build_delete_round_trip(void)
{
	static const char *const keys[] = {
	        "plain.txt",
	        "a&b",
	        "<tag>",
	        "quote\"s and 'apostrophes'",
	        "]]> end of cdata",
	        "&amp; literally",
	        "\xc3\xbc\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xf0\x9f\x8e\x89",
	        "tab\there",
	        "cr\rlf\n",
	        " ",
	        "  leading and trailing  ",
	        "dir/sub dir/file+1%20.txt",
	};
	size_t nk = sizeof(keys) / sizeof(keys[0]);
	char **texts, *root, *ns;
	size_t n;
	char *doc = s3_xml_build_delete(keys, nk);

	CHECK(doc != NULL);
	if (!doc)
		return;
	CHECK_INT(xml_extract(doc, "Key", &texts, &n, &root, &ns), 0);
	CHECK_STR(root, "Delete");
	CHECK_STR(ns, S3NS);
	CHECK_INT(n, nk);
	for (size_t i = 0; i < n && i < nk; i++)
		CHECK_STR(texts[i], keys[i]);
	xml_extract_free(texts, n, root, ns);
	CHECK_INT(xml_extract(doc, "Quiet", &texts, &n, &root, &ns), 0);
	CHECK_INT(n, 1);
	if (n == 1)
		CHECK_STR(texts[0], "true");
	xml_extract_free(texts, n, root, ns);
	CHECK_INT(xml_extract(doc, "Object", &texts, &n, &root, &ns), 0);
	CHECK_INT(n, nk);
	xml_extract_free(texts, n, root, ns);
	free(doc);

	/* The same keys through our own parser, as a listing would bring
	 * them back. */
	size_t cap = 4096;
	char *list = xmalloc(cap), *o = list;
	o += sprintf(o, "<ListBucketResult>");
	doc = s3_xml_build_delete(keys, nk);
	CHECK(doc != NULL);
	/* Reuse the escaped <Key> elements exactly as the builder wrote
	 * them. */
	for (const char *k = doc; doc && (k = strstr(k, "<Key>")) != NULL;) {
		const char *e = strstr(k, "</Key>") + 6;
		o += sprintf(o, "<Contents>%.*s<Size>1</Size></Contents>", (int)(e - k), k);
		k = e;
	}
	sprintf(o, "</ListBucketResult>");
	free(doc);
	s3_list_page p;
	CHECK_INT(parse_list(list, &p), 0);
	CHECK_INT(p.n_objects, nk);
	for (size_t i = 0; i < p.n_objects && i < nk; i++)
		CHECK_STR(p.objects[i].key, keys[i]);
	s3_list_page_free(&p);
	free(list);

	/* Keys XML 1.0 cannot carry. */
	static const char *const bad[] = {"ctl\x01", "bad utf8 \xff", "overlong \xc0\xaf",
	                                  "surrogate \xed\xa0\x80", ""};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *one[2] = {"fine", bad[i]};
		errno = 0;
		CHECK(s3_xml_build_delete(one, 2) == NULL);
		CHECK_INT(errno, EINVAL);
	}

	/* 1000 keys, the DeleteObjects maximum. */
	char **many = xmalloc(1000 * sizeof(*many));
	for (int i = 0; i < 1000; i++) {
		many[i] = xmalloc(32);
		snprintf(many[i], 32, "k/%04d & <%d>", i, i);
	}
	doc = s3_xml_build_delete((const char *const *)many, 1000);
	CHECK(doc != NULL);
	CHECK_INT(xml_extract(doc, "Key", &texts, &n, &root, &ns), 0);
	CHECK_INT(n, 1000);
	for (size_t i = 0; i < n && i < 1000; i++)
		CHECK_STR(texts[i], many[i]);
	xml_extract_free(texts, n, root, ns);
	free(doc);
	for (int i = 0; i < 1000; i++)
		free(many[i]);
	free(many);
}

/* ---------------------------------------------------------------- threads */

static void *thread_main(void *arg)
{
	long *bad = arg;
	static const char *const keys[] = {"a&b", "c"};

	for (int i = 0; i < 300; i++) {
		s3_list_page p;
		if (parse_list(aws_list, &p) != 0 || p.n_objects != 2)
			__atomic_add_fetch(bad, 1, __ATOMIC_RELAXED);
		s3_list_page_free(&p);
		char *d = s3_xml_build_delete(keys, 2);
		if (!d)
			__atomic_add_fetch(bad, 1, __ATOMIC_RELAXED);
		free(d);
		s3_error err;
		memset(&err, 0, sizeof(err));
		if (s3_xml_parse_error(billion_laughs, strlen(billion_laughs), &err) != -EPROTO)
			__atomic_add_fetch(bad, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

/* The first use of libxml2 happens in many threads at once. */
static void test_concurrent_use(void)
{
	pthread_t t[8];
	long bad = 0;

	for (int i = 0; i < 8; i++)
		CHECK(pthread_create(&t[i], NULL, thread_main, &bad) == 0);
	for (int i = 0; i < 8; i++)
		pthread_join(t[i], NULL);
	CHECK_INT(bad, 0);
}

/* ---------------------------------------------------------------- time */

static int64_t ref_ns(int y, int mo, int d, int h, int mi, int s, long ns)
{
	struct tm tm = {.tm_year = y - 1900,
	                .tm_mon = mo - 1,
	                .tm_mday = d,
	                .tm_hour = h,
	                .tm_min = mi,
	                .tm_sec = s};
	return (int64_t)timegm(&tm) * INT64_C(1000000000) + ns;
}

static void test_iso8601(void)
{
	CHECK_INT(s3_parse_iso8601("2009-10-12T17:50:30.000Z"), T_2009);
	CHECK_INT(s3_parse_iso8601("2009-10-12T17:50:30Z"), T_2009);
	CHECK_INT(s3_parse_iso8601("2009-10-12T17:50:30+00:00"), T_2009);
	CHECK_INT(s3_parse_iso8601("1970-01-01T00:00:00.000Z"), 0);
	CHECK_INT(s3_parse_iso8601("2024-02-29T12:00:00.5Z"),
	          ref_ns(2024, 2, 29, 12, 0, 0, 500000000));
	CHECK_INT(s3_parse_iso8601("2000-03-01T00:00:00.123456789Z"),
	          ref_ns(2000, 3, 1, 0, 0, 0, 123456789));
	CHECK_INT(s3_parse_iso8601("2038-01-19T03:14:08Z"), ref_ns(2038, 1, 19, 3, 14, 8, 0));
	CHECK_INT(s3_parse_iso8601("2100-12-31T23:59:59.999Z"),
	          ref_ns(2100, 12, 31, 23, 59, 59, 999000000));
	CHECK_INT(s3_parse_iso8601(NULL), -1);
	CHECK_INT(s3_parse_iso8601(""), -1);
	CHECK_INT(s3_parse_iso8601("yesterday"), -1);
	CHECK_INT(s3_parse_iso8601("2009-13-01T00:00:00Z"), -1);
	CHECK_INT(s3_parse_iso8601("2009-10-12T24:00:00Z"), -1);
	CHECK_INT(s3_parse_iso8601("2009-10-12 17:50:30Z"), -1);
	CHECK_INT(s3_parse_iso8601("2009-10-12T17:50:30-07:00"), -1);
	CHECK_INT(s3_parse_iso8601("2009-10-12"), -1);
}

/* Inputs s3_parse_iso8601() accepts although they are not valid S3 times
 * (reported; run as an expected failure until util.c is fixed). */
static int test_iso8601_strict(void)
{
	CHECK_INT(s3_parse_iso8601("2009-10-12T17:50:30.000Zjunk"), -1);
	CHECK_INT(s3_parse_iso8601("2009-10-12T-1:50:30Z"), -1);
	CHECK_INT(s3_parse_iso8601("2009-10-12T17:-5:30Z"), -1);
	CHECK_INT(s3_parse_iso8601("2009-02-30T00:00:00Z"), -1);
	CHECK_INT(s3_parse_iso8601(" 2009-10-12T17:50:30Z"), -1);
	/* Past 2262 nanoseconds overflow int64_t (undefined behaviour today). */
	CHECK_INT(s3_parse_iso8601("2262-04-12T00:00:00Z"), -1);
	CHECK_INT(s3_parse_iso8601("9999-12-31T23:59:59Z"), -1);
	CHECK_INT(s3_parse_http_date("Fri, 31 Dec 9999 23:59:59 GMT"), -1);
	/* A valid instant must not collide with the error value. */
	/* S3 hands out no times before the epoch: refused (-1 is the error). */
	CHECK_INT(s3_parse_iso8601("1969-12-31T23:59:59.999999999Z"), -1);
	return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "--iso8601-strict") == 0)
		return test_iso8601_strict();

	test_list_aws_example();
	test_list_swift_s3api();
	test_list_no_namespace();
	test_list_url_encoding();
	test_list_truncated_with_prefixes();
	test_list_rejects();
	test_list_truncated_input();
	test_entity_bomb();
	test_external_entities();
	test_depth_and_count_limits();
	test_encoding_declarations();
	test_silence();
	test_error_documents();
	test_etag_results();
	test_mpu_initiate();
	test_delete_result();
	test_mpu_list();
	test_build_complete();
	test_build_delete_round_trip();
	test_concurrent_use();
	test_iso8601();

	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	printf("all xml checks passed\n");
	return 0;
}
