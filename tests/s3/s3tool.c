/*
 * s3tool - a command line over the s3/ library, for integration and fault
 * tests: every operation of s3.h can be driven from a script, and the exit
 * status is the errno the library reported (0 on success).
 *
 *   s3tool [options] ls [PREFIX] [--delimiter D] [--max-keys N]
 *   s3tool [options] head KEY
 *   s3tool [options] get KEY [OFFSET LENGTH]        (body to stdout)
 *   s3tool [options] put KEY FILE [--meta NAME=VALUE]... [--content-type T]
 *   s3tool [options] upload KEY FILE [--part-size BYTES] [--parallel N]
 *   s3tool [options] copy SRC DST [--replace] [--meta NAME=VALUE]...
 *   s3tool [options] rm KEY...
 *   s3tool [options] rm-stdin                        (keys, one per line)
 *   s3tool [options] uploads [PREFIX]                (in-progress multipart)
 *   s3tool [options] abort KEY UPLOAD_ID
 * options: --endpoint URL --bucket B --region R --path-style --retries N
 *          --timeout SECONDS --connect-timeout SECONDS --retry-max SECONDS
 *          --ca-bundle FILE --passwd-file FILE --profile P --stats -v
 * Environment: S3_ENDPOINT, S3_BUCKET as defaults; credentials through the
 * library's chain (AWS_ACCESS_KEY_ID, ...).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "s3.h"

static int verbose;

static void log_stderr(int level, const char *fmt, va_list ap)
{
	static const char *const names[] = {"error", "warning", "info", "debug"};

	fprintf(stderr, "s3tool: %s: ", names[level & 3]);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

static int fail(const char *what, int r, const s3_error *err)
{
	char desc[512];

	s3_error_format(err, desc, sizeof(desc));
	fprintf(stderr, "s3tool: %s: %s (%s)\n", what, strerror(-r), desc);
	return -r;
}

struct out_sink {
	uint64_t written; /* object offset of the next byte stdout wants */
};

static int stdout_sink(void *ctx, uint64_t offset, const void *data, size_t len)
{
	struct out_sink *o = ctx;
	const char *p = data;

	/* A retry re-delivers from where the body broke off; skip any overlap. */
	if (offset + len <= o->written)
		return 0;
	if (offset < o->written) {
		p += o->written - offset;
		len -= (size_t)(o->written - offset);
	} else if (offset > o->written) {
		return -EIO; /* a gap would corrupt the output */
	}
	if (fwrite(p, 1, len, stdout) != len)
		return -EIO;
	o->written += len;
	return 0;
}

static int parse_meta(s3_meta *m, const char *arg)
{
	const char *eq = strchr(arg, '=');
	char name[256];

	if (!eq || (size_t)(eq - arg) >= sizeof(name))
		return -EINVAL;
	memcpy(name, arg, (size_t)(eq - arg));
	name[eq - arg] = '\0';
	return s3_meta_set(m, name, eq + 1);
}

static int open_file(const char *path, uint64_t *size)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || fstat(fd, &st) < 0) {
		fprintf(stderr, "s3tool: %s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	*size = (uint64_t)st.st_size;
	return fd;
}

static void print_stats(const s3_client *c)
{
	s3_stats st;

	s3_client_stats(c, &st);
	fprintf(stderr, "stats:");
	for (int i = 0; i < S3_REQ__COUNT; i++)
		fprintf(stderr, " %s=%" PRIu64, s3_req_type_name((enum s3_req_type)i),
		        st.requests[i]);
	fprintf(stderr, " retries=%" PRIu64 " errors=%" PRIu64 "\n", st.retries, st.errors);
}

static int cmd_ls(s3_client *c, int argc, char **argv)
{
	s3_list_params p = {0};
	s3_error err;
	char *token = NULL;
	int r = 0;

	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--delimiter") == 0 && i + 1 < argc)
			p.delimiter = argv[++i];
		else if (strcmp(argv[i], "--max-keys") == 0 && i + 1 < argc)
			p.max_keys = atoi(argv[++i]);
		else if (strcmp(argv[i], "--fetch-owner") == 0)
			p.fetch_owner = true;
		else
			p.prefix = argv[i];
	}
	do {
		s3_list_page page;

		p.continuation_token = token;
		r = s3_list_objects(c, &p, &page, &err);
		if (r)
			break;
		for (size_t i = 0; i < page.n_prefixes; i++)
			printf("PRE\t%s\n", page.prefixes[i]);
		for (size_t i = 0; i < page.n_objects; i++) {
			s3_object *o = &page.objects[i];
			printf("OBJ\t%s\t%" PRIu64 "\t%s\t%" PRId64 "%s%s\n", o->key, o->size,
			       o->etag, o->last_modified_ns / 1000000000, o->owner_id ? "\t" : "",
			       o->owner_id ? o->owner_id : "");
		}
		free(token);
		token = page.truncated && page.next_token ? strdup(page.next_token) : NULL;
		s3_list_page_free(&page);
	} while (token);
	free(token);
	return r ? fail("ls", r, &err) : 0;
}

static int cmd_head(s3_client *c, int argc, char **argv)
{
	s3_head h;
	s3_error err;
	int r;

	if (argc != 1)
		return EINVAL;
	r = s3_head_object(c, argv[0], &h, &err);
	if (r)
		return fail("head", r, &err);
	printf("size\t%" PRIu64 "\netag\t%s\nlast-modified\t%" PRId64 "\ncontent-type\t%s\n",
	       h.size, h.etag, h.last_modified_ns / 1000000000,
	       h.content_type ? h.content_type : "");
	for (size_t i = 0; i < h.meta.n; i++)
		printf("meta\t%s\t%s\n", h.meta.items[i].name, h.meta.items[i].value);
	s3_head_clear(&h);
	return 0;
}

static int cmd_get(s3_client *c, int argc, char **argv)
{
	s3_get_params p = {0};
	struct out_sink o = {0};
	s3_error err;
	int r;

	if (argc != 1 && argc != 3)
		return EINVAL;
	if (argc == 3) {
		p.offset = strtoull(argv[1], NULL, 10);
		p.length = strtoull(argv[2], NULL, 10);
	}
	o.written = p.offset;
	r = s3_get_object(c, argv[0], &p, stdout_sink, &o, NULL, &err);
	if (fflush(stdout) != 0 && !r)
		r = -EIO;
	return r ? fail("get", r, &err) : 0;
}

static int cmd_put(s3_client *c, int argc, char **argv, bool multipart)
{
	s3_meta meta = {0};
	s3_put_opts o = {.meta = &meta};
	uint64_t size, part_size = 8u << 20;
	int parallel = 4, fd, r;
	char etag[S3_ETAG_MAX];
	s3_error err;

	if (argc < 2)
		return EINVAL;
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--meta") == 0 && i + 1 < argc) {
			if (parse_meta(&meta, argv[++i]))
				return EINVAL;
		} else if (strcmp(argv[i], "--content-type") == 0 && i + 1 < argc) {
			o.content_type = argv[++i];
		} else if (strcmp(argv[i], "--part-size") == 0 && i + 1 < argc) {
			part_size = strtoull(argv[++i], NULL, 10);
		} else if (strcmp(argv[i], "--parallel") == 0 && i + 1 < argc) {
			parallel = atoi(argv[++i]);
		} else {
			s3_meta_clear(&meta);
			return EINVAL;
		}
	}
	fd = open_file(argv[1], &size);
	if (fd < 0) {
		s3_meta_clear(&meta);
		return EIO;
	}
	if (multipart)
		r = s3_upload_fd(c, argv[0], fd, size, part_size, parallel, &o, etag, &err);
	else
		r = s3_put_object_fd(c, argv[0], fd, 0, size, &o, etag, &err);
	close(fd);
	s3_meta_clear(&meta);
	if (r)
		return fail("put", r, &err);
	printf("%s\n", etag);
	return 0;
}

static int cmd_copy(s3_client *c, int argc, char **argv)
{
	s3_meta meta = {0};
	s3_put_opts o = {.meta = &meta};
	enum s3_metadata_directive d = S3_META_COPY;
	char etag[S3_ETAG_MAX];
	s3_error err;
	int r;

	if (argc < 2)
		return EINVAL;
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--replace") == 0) {
			d = S3_META_REPLACE;
		} else if (strcmp(argv[i], "--meta") == 0 && i + 1 < argc) {
			if (parse_meta(&meta, argv[++i]))
				return EINVAL;
		} else {
			s3_meta_clear(&meta);
			return EINVAL;
		}
	}
	r = s3_copy_object(c, argv[0], argv[1], d, &o, etag, &err);
	s3_meta_clear(&meta);
	if (r)
		return fail("copy", r, &err);
	printf("%s\n", etag);
	return 0;
}

static int cmd_rm(s3_client *c, int argc, char **argv)
{
	s3_error err;
	int r;

	for (int i = 0; i < argc; i++) {
		r = s3_delete_object(c, argv[i], &err);
		if (r)
			return fail("rm", r, &err);
	}
	return 0;
}

static int cmd_rm_stdin(s3_client *c)
{
	char **keys = NULL, *line = NULL;
	size_t n = 0, cap = 0, lcap = 0;
	ssize_t len;
	s3_error err;
	int r;

	while ((len = getline(&line, &lcap, stdin)) > 0) {
		if (line[len - 1] == '\n')
			line[--len] = '\0';
		if (!len)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 256;
			keys = realloc(keys, cap * sizeof(*keys));
			if (!keys)
				return ENOMEM;
		}
		keys[n++] = strdup(line);
	}
	free(line);
	r = s3_delete_objects(c, (const char *const *)keys, n, &err);
	for (size_t i = 0; i < n; i++)
		free(keys[i]);
	free(keys);
	return r ? fail("rm-stdin", r, &err) : 0;
}

static int cmd_uploads(s3_client *c, int argc, char **argv)
{
	s3_mpu_list l;
	s3_error err;
	int r = s3_mpu_list_uploads(c, argc ? argv[0] : NULL, &l, &err);

	if (r)
		return fail("uploads", r, &err);
	for (size_t i = 0; i < l.n; i++)
		printf("%s\t%s\n", l.uploads[i].key, l.uploads[i].upload_id);
	s3_mpu_list_free(&l);
	return 0;
}

static int cmd_abort(s3_client *c, int argc, char **argv)
{
	s3_error err;
	int r;

	if (argc != 2)
		return EINVAL;
	r = s3_mpu_abort(c, argv[0], argv[1], &err);
	return r ? fail("abort", r, &err) : 0;
}

int main(int argc, char **argv)
{
	s3_config cfg = {
	        .endpoint = getenv("S3_ENDPOINT"),
	        .bucket = getenv("S3_BUCKET"),
	        .retries = -1,
	        .log = log_stderr,
	        .log_level = S3_LOG_WARNING,
	};
	bool stats = false;
	char errbuf[1024];
	int i, r;

	for (i = 1; i < argc && strncmp(argv[i], "-", 1) == 0; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--path-style") == 0) {
			cfg.path_style = true;
		} else if (strcmp(a, "--stats") == 0) {
			stats = true;
		} else if (strcmp(a, "-v") == 0) {
			verbose++;
			cfg.log_level = S3_LOG_DEBUG;
		} else if (v && strcmp(a, "--endpoint") == 0) {
			cfg.endpoint = v, i++;
		} else if (v && strcmp(a, "--bucket") == 0) {
			cfg.bucket = v, i++;
		} else if (v && strcmp(a, "--region") == 0) {
			cfg.region = v, i++;
		} else if (v && strcmp(a, "--retries") == 0) {
			cfg.retries = atoi(v), i++;
		} else if (v && strcmp(a, "--timeout") == 0) {
			cfg.readwrite_timeout_s = atol(v), i++;
		} else if (v && strcmp(a, "--connect-timeout") == 0) {
			cfg.connect_timeout_s = atol(v), i++;
		} else if (v && strcmp(a, "--retry-max") == 0) {
			cfg.retry_max_seconds = atof(v), i++;
		} else if (v && strcmp(a, "--ca-bundle") == 0) {
			cfg.ca_bundle = v, i++;
		} else if (v && strcmp(a, "--passwd-file") == 0) {
			cfg.passwd_file = v, i++;
		} else if (v && strcmp(a, "--profile") == 0) {
			cfg.profile = v, i++;
		} else {
			fprintf(stderr,
			        "s3tool: unknown option %s (see the comment atop s3tool.c)\n", a);
			return EINVAL;
		}
	}
	if (i >= argc) {
		fprintf(stderr, "usage: s3tool [options] "
		                "ls|head|get|put|upload|copy|rm|rm-stdin|uploads|abort ...\n");
		return EINVAL;
	}
	s3_client *c = s3_client_new(&cfg, errbuf, sizeof(errbuf));
	if (!c) {
		fprintf(stderr, "s3tool: %s\n", errbuf);
		return EINVAL;
	}
	const char *cmd = argv[i++];
	int n = argc - i;
	char **args = argv + i;
	if (strcmp(cmd, "ls") == 0)
		r = cmd_ls(c, n, args);
	else if (strcmp(cmd, "head") == 0)
		r = cmd_head(c, n, args);
	else if (strcmp(cmd, "get") == 0)
		r = cmd_get(c, n, args);
	else if (strcmp(cmd, "put") == 0)
		r = cmd_put(c, n, args, false);
	else if (strcmp(cmd, "upload") == 0)
		r = cmd_put(c, n, args, true);
	else if (strcmp(cmd, "copy") == 0)
		r = cmd_copy(c, n, args);
	else if (strcmp(cmd, "rm") == 0)
		r = cmd_rm(c, n, args);
	else if (strcmp(cmd, "rm-stdin") == 0)
		r = cmd_rm_stdin(c);
	else if (strcmp(cmd, "uploads") == 0)
		r = cmd_uploads(c, n, args);
	else if (strcmp(cmd, "abort") == 0)
		r = cmd_abort(c, n, args);
	else {
		fprintf(stderr, "s3tool: unknown command %s\n", cmd);
		r = EINVAL;
	}
	if (stats)
		print_stats(c);
	s3_client_free(c);
	return r;
}
