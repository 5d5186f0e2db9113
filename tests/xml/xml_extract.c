/*
 * xml_extract.c - see xml_extract.h.
 */
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "xml_extract.h"

static void walk(xmlNodePtr n, const char *name, char ***texts, size_t *count)
{
	for (; n; n = n->next) {
		if (n->type != XML_ELEMENT_NODE)
			continue;
		if (strcmp((const char *)n->name, name) == 0) {
			xmlChar *c = xmlNodeGetContent(n);
			*texts = realloc(*texts, (*count + 1) * sizeof(**texts));
			if (!*texts)
				abort();
			(*texts)[(*count)++] = strdup(c ? (const char *)c : "");
			xmlFree(c);
		}
		walk(n->children, name, texts, count);
	}
}

int xml_extract(const char *doc, const char *name, char ***texts, size_t *n, char **root_name,
                char **root_ns)
{
	xmlDocPtr d = xmlReadMemory(doc, (int)strlen(doc), NULL, NULL,
	                            XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
	xmlNodePtr root;

	*texts = NULL;
	*n = 0;
	*root_name = NULL;
	*root_ns = NULL;
	if (!d)
		return -1;
	root = xmlDocGetRootElement(d);
	if (!root) {
		xmlFreeDoc(d);
		return -1;
	}
	*root_name = strdup((const char *)root->name);
	*root_ns = strdup(root->ns && root->ns->href ? (const char *)root->ns->href : "");
	walk(root, name, texts, n);
	xmlFreeDoc(d);
	return 0;
}

void xml_extract_free(char **texts, size_t n, char *root_name, char *root_ns)
{
	for (size_t i = 0; i < n; i++)
		free(texts[i]);
	free(texts);
	free(root_name);
	free(root_ns);
}
