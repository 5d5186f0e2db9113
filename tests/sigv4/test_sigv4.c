/*
 * test_sigv4.c - the SigV4 signer against AWS's published S3 examples
 * ("Signature Calculations for the Authorization Header: Transferring Payload
 * in a Single Chunk"), then the edge cases those examples do not reach.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#include "../check.h"

#define EXAMPLE_HOST   "examplebucket.s3.amazonaws.com"
#define EXAMPLE_DATE   "20130524T000000Z"
#define EMPTY_SHA256   "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define EXAMPLE_SCOPE  "20130524/us-east-1/s3/aws4_request"
#define EXAMPLE_CREDIT "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/" EXAMPLE_SCOPE

/* The request of AWS's examples; each test fills in what differs. */
static s3_sigv4_input example_input(const char *method, const char *path)
{
	return (s3_sigv4_input){
	        .method = method,
	        .host = EXAMPLE_HOST,
	        .path = path,
	        .payload_hash = EMPTY_SHA256,
	        .amz_date = EXAMPLE_DATE,
	        .region = "us-east-1",
	        .service = "s3",
	        .access_key = "AKIAIOSFODNN7EXAMPLE",
	        .secret_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
	};
}

static void check_sts(const s3_sigv4_output *out, const char *cr_hash)
{
	char want[256];

	snprintf(want, sizeof(want), "AWS4-HMAC-SHA256\n" EXAMPLE_DATE "\n" EXAMPLE_SCOPE "\n%s",
	         cr_hash);
	CHECK_STR(out->string_to_sign, want);
}

/* ---------------------------------------------------------------- AWS examples */

static void test_aws_get_object_with_range(void)
{
	const s3_kv headers[] = {{"Range", "bytes=0-9"}};
	s3_sigv4_input in = example_input("GET", "/test.txt");
	s3_sigv4_output out;

	in.headers = headers;
	in.n_headers = 1;
	CHECK(s3_sigv4_sign(&in, &out) == 0);
	CHECK_STR(out.canonical_request,
	          "GET\n"
	          "/test.txt\n"
	          "\n"
	          "host:examplebucket.s3.amazonaws.com\n"
	          "range:bytes=0-9\n"
	          "x-amz-content-sha256:" EMPTY_SHA256 "\n"
	          "x-amz-date:20130524T000000Z\n"
	          "\n"
	          "host;range;x-amz-content-sha256;x-amz-date\n" EMPTY_SHA256);
	check_sts(&out, "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972");
	CHECK_STR(out.signature,
	          "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
	CHECK_STR(out.signed_headers, "host;range;x-amz-content-sha256;x-amz-date");
	CHECK_STR(out.authorization, EXAMPLE_CREDIT
	          ", SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
	          "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
	CHECK_STR(out.url_path, "/test.txt");
	CHECK_STR(out.url_query, "");
	s3_sigv4_output_clear(&out);
}

static void test_aws_put_object_with_payload(void)
{
	static const char body[] = "Welcome to Amazon S3.";
	const s3_kv headers[] = {
	        {"Date", "Fri, 24 May 2013 00:00:00 GMT"},
	        {"x-amz-storage-class", "REDUCED_REDUNDANCY"},
	};
	s3_sigv4_input in = example_input("PUT", "/test$file.text");
	s3_sigv4_output out;
	char hash[65];

	s3_sha256_hex(body, strlen(body), hash);
	CHECK_STR(hash, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
	in.payload_hash = hash;
	in.headers = headers;
	in.n_headers = 2;
	CHECK(s3_sigv4_sign(&in, &out) == 0);
	CHECK_STR(out.canonical_request,
	          "PUT\n"
	          "/test%24file.text\n"
	          "\n"
	          "date:Fri, 24 May 2013 00:00:00 GMT\n"
	          "host:examplebucket.s3.amazonaws.com\n"
	          "x-amz-content-sha256:"
	          "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072\n"
	          "x-amz-date:20130524T000000Z\n"
	          "x-amz-storage-class:REDUCED_REDUNDANCY\n"
	          "\n"
	          "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class\n"
	          "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
	check_sts(&out, "9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d");
	CHECK_STR(out.signature,
	          "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
	CHECK_STR(out.url_path, "/test%24file.text");
	s3_sigv4_output_clear(&out);
}

static void test_aws_get_bucket_lifecycle(void)
{
	const s3_kv query[] = {{"lifecycle", NULL}};
	s3_sigv4_input in = example_input("GET", "/");
	s3_sigv4_output out;

	in.query = query;
	in.n_query = 1;
	CHECK(s3_sigv4_sign(&in, &out) == 0);
	CHECK_STR(out.canonical_request, "GET\n"
	                                 "/\n"
	                                 "lifecycle=\n"
	                                 "host:examplebucket.s3.amazonaws.com\n"
	                                 "x-amz-content-sha256:" EMPTY_SHA256 "\n"
	                                 "x-amz-date:20130524T000000Z\n"
	                                 "\n"
	                                 "host;x-amz-content-sha256;x-amz-date\n" EMPTY_SHA256);
	check_sts(&out, "9766c798316ff2757b517bc739a67f6213b4ab36dd5da2f94eaebf79c77395ca");
	CHECK_STR(out.signature,
	          "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");
	CHECK_STR(out.url_query, "lifecycle=");
	s3_sigv4_output_clear(&out);
}

static void test_aws_list_objects_sorts_query(void)
{
	/* Given out of order on purpose: the canonical form sorts them. */
	const s3_kv query[] = {{"prefix", "J"}, {"max-keys", "2"}};
	s3_sigv4_input in = example_input("GET", "/");
	s3_sigv4_output out;

	in.query = query;
	in.n_query = 2;
	CHECK(s3_sigv4_sign(&in, &out) == 0);
	CHECK_STR(out.canonical_request, "GET\n"
	                                 "/\n"
	                                 "max-keys=2&prefix=J\n"
	                                 "host:examplebucket.s3.amazonaws.com\n"
	                                 "x-amz-content-sha256:" EMPTY_SHA256 "\n"
	                                 "x-amz-date:20130524T000000Z\n"
	                                 "\n"
	                                 "host;x-amz-content-sha256;x-amz-date\n" EMPTY_SHA256);
	check_sts(&out, "df57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e0f1e7df1b9b7");
	CHECK_STR(out.signature,
	          "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
	CHECK_STR(out.url_query, "max-keys=2&prefix=J");
	s3_sigv4_output_clear(&out);
}

/* ---------------------------------------------------------------- edge cases */

static void test_session_token_is_signed(void)
{
	s3_sigv4_input in = example_input("GET", "/test.txt");
	s3_sigv4_output plain, with_token, empty_token;

	CHECK(s3_sigv4_sign(&in, &plain) == 0);
	in.session_token = "AQoDYXdzEJr//token+with=odd/chars";
	CHECK(s3_sigv4_sign(&in, &with_token) == 0);
	in.session_token = "";
	CHECK(s3_sigv4_sign(&in, &empty_token) == 0);

	CHECK_STR(with_token.signed_headers,
	          "host;x-amz-content-sha256;x-amz-date;x-amz-security-token");
	CHECK(strstr(with_token.canonical_request,
	             "\nx-amz-security-token:AQoDYXdzEJr//token+with=odd/chars\n\n") != NULL);
	CHECK(strcmp(with_token.signature, plain.signature) != 0);
	/* An empty token is no token at all. */
	CHECK_STR(empty_token.signed_headers, "host;x-amz-content-sha256;x-amz-date");
	CHECK_STR(empty_token.signature, plain.signature);
	s3_sigv4_output_clear(&plain);
	s3_sigv4_output_clear(&with_token);
	s3_sigv4_output_clear(&empty_token);
}

static void test_empty_query_values_keep_their_equals_sign(void)
{
	const s3_kv query[] = {{"uploads", ""}, {"delete", NULL}, {"acl", ""}};
	s3_sigv4_input in = example_input("POST", "/bucket");
	s3_sigv4_output out;

	in.query = query;
	in.n_query = 3;
	CHECK(s3_sigv4_sign(&in, &out) == 0);
	CHECK_STR(out.url_query, "acl=&delete=&uploads=");
	CHECK(strncmp(out.canonical_request, "POST\n/bucket\nacl=&delete=&uploads=\n", 35) == 0);
	s3_sigv4_output_clear(&out);
}

static void test_key_with_special_bytes_is_encoded_once(void)
{
	s3_sigv4_input in =
	        example_input("GET", "/bucket/a b+c%d~e=f&g?h#i/\xe6\x97\xa5\xe6\x9c\xac//x.");
	s3_sigv4_output out;

	CHECK(s3_sigv4_sign(&in, &out) == 0);
	/* '%' becomes %25 once (not %2525); '/' is kept, '~' is unreserved, and
	 * "//" and a trailing "." are not normalized away. */
	CHECK_STR(out.url_path, "/bucket/a%20b%2Bc%25d~e%3Df%26g%3Fh%23i/%E6%97%A5%E6%9C%AC//x.");
	CHECK(strncmp(out.canonical_request, "GET\n/bucket/a%20b%2Bc%25d~e%3Df", 31) == 0);
	s3_sigv4_output_clear(&out);
}

static void test_query_names_and_values_are_encoded_and_sorted(void)
{
	const s3_kv query[] = {
	        {"prefix", "dir/a b+c%~=&?"}, {"b", "2"}, {"a", "z"}, {"a", "y"}, {"A", "x"},
	        {"x y", "\xc3\xa9"},
	};
	s3_sigv4_input in = example_input("GET", "/");
	s3_sigv4_output out;

	in.query = query;
	in.n_query = sizeof(query) / sizeof(query[0]);
	CHECK(s3_sigv4_sign(&in, &out) == 0);
	/* Upper case sorts first (byte order); a repeated name sorts by value;
	 * '/' in a value is encoded, unlike in the path. */
	CHECK_STR(out.url_query,
	          "A=x&a=y&a=z&b=2&prefix=dir%2Fa%20b%2Bc%25~%3D%26%3F&x%20y=%C3%A9");
	s3_sigv4_output_clear(&out);
}

static void test_query_sorts_by_encoded_name(void)
{
	/* Raw '.' (0x2e) sorts before raw '/' (0x2f), but encoded, "a%2Fb"
	 * comes first since '%' (0x25) < '.': sorting must follow encoding. */
	const s3_kv query[] = {{"a.b", "1"}, {"a/b", "2"}, {"a~b", "3"}};
	s3_sigv4_input in = example_input("GET", "/");
	s3_sigv4_output out;

	in.query = query;
	in.n_query = 3;
	CHECK(s3_sigv4_sign(&in, &out) == 0);
	CHECK_STR(out.url_query, "a%2Fb=2&a.b=1&a~b=3");
	s3_sigv4_output_clear(&out);
}

static void test_headers_are_folded_trimmed_and_joined(void)
{
	const s3_kv headers[] = {
	        {"X-Amz-Meta-Note", "  one   two\t\tthree  "},
	        {"Content-Type", "text/plain"},
	        {"x-amz-meta-note", "\tfour"},
	        {"X-AMZ-META-EMPTY", "   "},
	        {"x-amz-meta-null", NULL},
	};
	s3_sigv4_input in = example_input("PUT", "/k");
	s3_sigv4_output out;

	in.headers = headers;
	in.n_headers = sizeof(headers) / sizeof(headers[0]);
	CHECK(s3_sigv4_sign(&in, &out) == 0);
	CHECK_STR(out.signed_headers, "content-type;host;x-amz-content-sha256;x-amz-date;"
	                              "x-amz-meta-empty;x-amz-meta-note;x-amz-meta-null");
	CHECK(strstr(out.canonical_request, "\ncontent-type:text/plain\n") != NULL);
	/* Duplicates are joined in the order they were given. */
	CHECK(strstr(out.canonical_request, "\nx-amz-meta-note:one two three,four\n") != NULL);
	CHECK(strstr(out.canonical_request, "\nx-amz-meta-empty:\n") != NULL);
	CHECK(strstr(out.canonical_request, "\nx-amz-meta-null:\n\n") != NULL);
	s3_sigv4_output_clear(&out);
}

static void test_unsigned_payload_is_signed_as_given(void)
{
	s3_sigv4_input in = example_input("PUT", "/k");
	s3_sigv4_output out;

	in.payload_hash = "UNSIGNED-PAYLOAD";
	CHECK(s3_sigv4_sign(&in, &out) == 0);
	CHECK(strstr(out.canonical_request, "\nx-amz-content-sha256:UNSIGNED-PAYLOAD\n") != NULL);
	CHECK(strcmp(out.canonical_request + strlen(out.canonical_request) - 17,
	             "\nUNSIGNED-PAYLOAD") == 0);
	s3_sigv4_output_clear(&out);
}

static void test_empty_path_means_root(void)
{
	s3_sigv4_input in = example_input("GET", NULL);
	s3_sigv4_output out;

	CHECK(s3_sigv4_sign(&in, &out) == 0);
	CHECK_STR(out.url_path, "/");
	s3_sigv4_output_clear(&out);
}

static void check_rejected(const s3_sigv4_input *in, const char *what)
{
	s3_sigv4_output out;
	int ret = s3_sigv4_sign(in, &out);

	if (ret != -EINVAL) {
		fprintf(stderr, "%s: expected -EINVAL, got %d\n", what, ret);
		failures++;
	}
	/* A failed call leaves nothing to free. */
	CHECK(!out.canonical_request && !out.string_to_sign && !out.signed_headers &&
	      !out.authorization && !out.url_path && !out.url_query);
	s3_sigv4_output_clear(&out);
}

static void test_bad_input_is_rejected(void)
{
	const s3_kv host_again[] = {{"Host", "evil.example"}};
	const s3_kv date_again[] = {{"X-Amz-Date", EXAMPLE_DATE}};
	const s3_kv crlf[] = {{"x-amz-meta-a", "ok\r\nInjected: yes"}};
	const s3_kv bad_name[] = {{"x amz", "v"}};
	const s3_kv no_name[] = {{NULL, "v"}};
	const s3_kv query_no_name[] = {{"a", "1"}, {NULL, "v"}};
	s3_sigv4_input in;

	in = example_input("GET", "/k");
	in.headers = host_again;
	in.n_headers = 1;
	check_rejected(&in, "Host passed by the caller");
	in.headers = date_again;
	check_rejected(&in, "x-amz-date passed by the caller");
	in.headers = crlf;
	check_rejected(&in, "CR LF in a header value");
	in.headers = bad_name;
	check_rejected(&in, "space in a header name");
	in.headers = no_name;
	check_rejected(&in, "NULL header name");

	in = example_input("GET", "/k");
	in.query = query_no_name;
	in.n_query = 2;
	check_rejected(&in, "NULL query name");

	in = example_input("GET", "/k");
	in.amz_date = "2013-05-24T00:00:00Z";
	check_rejected(&in, "extended ISO 8601 date");
	in = example_input("GET", "/k");
	in.secret_key = NULL;
	check_rejected(&in, "no secret key");
	in = example_input("GET", "/k");
	in.region = "us-east-1/x";
	check_rejected(&in, "slash in region");
	in = example_input("GET", "k");
	check_rejected(&in, "relative path");
	in = example_input("GET", "/k");
	in.session_token = "tok\nen";
	check_rejected(&in, "newline in session token");
}

static void test_output_clear_is_idempotent(void)
{
	s3_sigv4_input in = example_input("GET", "/k");
	s3_sigv4_output out;

	CHECK(s3_sigv4_sign(&in, &out) == 0);
	s3_sigv4_output_clear(&out);
	s3_sigv4_output_clear(&out);
	s3_sigv4_output_clear(NULL);
	CHECK(out.canonical_request == NULL && out.signature[0] == '\0');
}

int main(void)
{
	test_aws_get_object_with_range();
	test_aws_put_object_with_payload();
	test_aws_get_bucket_lifecycle();
	test_aws_list_objects_sorts_query();
	test_session_token_is_signed();
	test_empty_query_values_keep_their_equals_sign();
	test_key_with_special_bytes_is_encoded_once();
	test_query_names_and_values_are_encoded_and_sorted();
	test_query_sorts_by_encoded_name();
	test_headers_are_folded_trimmed_and_joined();
	test_unsigned_payload_is_signed_as_given();
	test_empty_path_means_root();
	test_bad_input_is_rejected();
	test_output_clear_is_idempotent();
	if (failures) {
		fprintf(stderr, "test_sigv4: %d check(s) failed\n", failures);
		return 1;
	}
	printf("test_sigv4: all checks passed\n");
	return 0;
}
