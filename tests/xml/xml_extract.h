/*
 * xml_extract.h - an independent reader for the documents s3/xml.c builds,
 * used by the round-trip tests and the fuzzer: plain libxml2, no code shared
 * with the parser under test.
 */
#ifndef BUCKETFS_TESTS_XML_EXTRACT_H
#define BUCKETFS_TESTS_XML_EXTRACT_H

#include <stddef.h>

/* Parses doc and collects the text of every element named `name` (local
 * name), in document order.  *root_ns receives the root's namespace URI
 * ("" when none).  Returns 0, or -1 when doc is not well-formed.  Free the
 * result with xml_extract_free(). */
int xml_extract(const char *doc, const char *name, char ***texts, size_t *n, char **root_name,
                char **root_ns);
void xml_extract_free(char **texts, size_t n, char *root_name, char *root_ns);

#endif
