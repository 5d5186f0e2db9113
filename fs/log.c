/*
 * log.c - the one logger of bucketfs, shared by fs/, s3/, meta/ and cache/.
 *
 * Destinations: a log file (logfile=), stderr (foreground), or syslog.  A
 * message is formatted, cleaned (secrets redacted, control characters made
 * blanks so it stays one line) and written with a single write() on an
 * O_APPEND descriptor, so lines of concurrent threads, and of several mounts
 * sharing one file, never interleave.
 *
 * Reopening after log rotation: fs_log_reopen() only sets a flag, which is
 * all a signal handler may safely do; the next message, under the lock,
 * opens the file again by name and writes there.  No thread is needed, and a
 * mount that logs nothing keeps the old (renamed) file open harmlessly.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "fs.h"

/* Longer messages are cut (and end in "..."). */
#define FS_LOG_MSG_MAX 4096

enum fs_log_dest { FS_DEST_STDERR = 0, FS_DEST_FILE, FS_DEST_SYSLOG };

static pthread_mutex_t fs_log_lock = PTHREAD_MUTEX_INITIALIZER;
/* Guarded by fs_log_lock. */
static enum fs_log_dest fs_log_dest = FS_DEST_STDERR;
static int fs_log_fd = -1;
static char *fs_log_path;
/* Read without the lock on every call, to drop disabled levels cheaply. */
static atomic_int fs_log_level = FS_LOG_WARNING;
static volatile sig_atomic_t fs_log_reopen_wanted;

static const char *const fs_log_names[] = {"err", "warn", "info", "debug"};

/*
 * Values that must never reach a log line, whoever formatted it.  s3/ is
 * careful not to pass them; this is the second line of defence.  A marker
 * that does not end in ':' or '=' counts only when one follows it, so a
 * message merely naming the header is left alone.
 */
static const struct {
	const char *marker;
	bool to_eol; /* the value runs to the end of the line (it has blanks) */
} fs_log_secrets[] = {
        {"Authorization:", true},
        {"X-Amz-Security-Token", false},
        {"x-amz-server-side-encryption-customer-key:", false},
        {"Signature=", false},
        {"aws_secret_access_key", false},
};

static bool fs_log_value_end(char c, bool to_eol)
{
	if (c == '\0' || c == '\n' || c == '\r')
		return true;
	if (to_eol)
		return false;
	return c == ' ' || c == '\t' || c == '&' || c == ',' || c == ';' || c == '"' || c == '\'' ||
	       c == '<';
}

/* Appends [s, s + n) to out, bounded. */
static void fs_log_put(char *out, size_t size, size_t *len, const char *s, size_t n)
{
	if (*len + 1 >= size)
		return;
	if (n > size - 1 - *len)
		n = size - 1 - *len;
	memcpy(out + *len, s, n);
	*len += n;
	out[*len] = '\0';
}

/* Copies msg to out with secret values replaced by "[redacted]" and control
 * characters by blanks. */
static void fs_log_clean(const char *msg, char *out, size_t size)
{
	const char *p = msg;
	size_t len = 0;

	out[0] = '\0';
	for (;;) {
		const char *hit = NULL, *q;
		size_t which = 0;

		for (size_t i = 0; i < sizeof(fs_log_secrets) / sizeof(fs_log_secrets[0]); i++) {
			const char *h = strcasestr(p, fs_log_secrets[i].marker);

			if (h && (!hit || h < hit)) {
				hit = h;
				which = i;
			}
		}
		if (!hit) {
			fs_log_put(out, size, &len, p, strlen(p));
			break;
		}
		q = hit + strlen(fs_log_secrets[which].marker);
		fs_log_put(out, size, &len, p, (size_t)(q - p));
		p = q;
		while (*q == ' ' || *q == '\t')
			q++;
		if (p[-1] != ':' && p[-1] != '=') {
			if (*q != ':' && *q != '=')
				continue; /* not followed by a value */
			q++;
			while (*q == ' ' || *q == '\t')
				q++;
		}
		fs_log_put(out, size, &len, p, (size_t)(q - p));
		while (!fs_log_value_end(*q, fs_log_secrets[which].to_eol))
			q++;
		fs_log_put(out, size, &len, "[redacted]", 10);
		p = q;
	}

	while (len && (out[len - 1] == '\n' || out[len - 1] == '\r'))
		out[--len] = '\0';
	for (size_t i = 0; i < len; i++) {
		if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f)
			out[i] = ' ';
	}
}

static int fs_log_open_file(const char *path)
{
	return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);
}

/* Called with the lock held.  On failure the old file is kept: losing the
 * rotation is better than losing the log. */
static void fs_log_reopen_locked(void)
{
	int fd;

	fs_log_reopen_wanted = 0;
	if (fs_log_dest != FS_DEST_FILE)
		return;
	fd = fs_log_open_file(fs_log_path);
	if (fd < 0)
		return;
	close(fs_log_fd);
	fs_log_fd = fd;
}

static void fs_log_write_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = write(fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return; /* nowhere left to report it */
		buf += n;
		len -= (size_t)n;
	}
}

static int fs_log_syslog_priority(int level)
{
	switch (level) {
	case FS_LOG_ERR:
		return LOG_ERR;
	case FS_LOG_WARNING:
		return LOG_WARNING;
	case FS_LOG_INFO:
		return LOG_INFO;
	default:
		return LOG_DEBUG;
	}
}

bool fs_log_enabled(int level)
{
	return level <= atomic_load_explicit(&fs_log_level, memory_order_relaxed);
}

void fs_log_va(int level, const char *fmt, va_list ap)
{
	char msg[FS_LOG_MSG_MAX], clean[2 * FS_LOG_MSG_MAX];
	char line[2 * FS_LOG_MSG_MAX + 128];
	struct timespec ts;
	struct tm tm;
	size_t n;
	int r, saved_errno = errno; /* callers log and then look at errno */

	if (!fs_log_enabled(level))
		return;
	if (level < FS_LOG_ERR)
		level = FS_LOG_ERR;
	if (level > FS_LOG_DEBUG)
		level = FS_LOG_DEBUG;

	r = vsnprintf(msg, sizeof(msg), fmt, ap);
	if (r < 0)
		snprintf(msg, sizeof(msg), "(unformattable log message: %s)", fmt);
	else if ((size_t)r >= sizeof(msg))
		memcpy(msg + sizeof(msg) - 4, "...", 4);
	fs_log_clean(msg, clean, sizeof(clean));

	pthread_mutex_lock(&fs_log_lock);
	if (fs_log_dest == FS_DEST_SYSLOG) {
		syslog(fs_log_syslog_priority(level), "%s", clean);
	} else {
		if (fs_log_reopen_wanted)
			fs_log_reopen_locked();
		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		n = strftime(line, sizeof(line), "%Y-%m-%d %H:%M:%S", &tm);
		snprintf(line + n, sizeof(line) - n, ".%03ld bucketfs[%ld] %s: %s\n",
		         ts.tv_nsec / 1000000, (long)getpid(), fs_log_names[level], clean);
		fs_log_write_all(fs_log_dest == FS_DEST_FILE ? fs_log_fd : STDERR_FILENO, line,
		                 strlen(line));
	}
	pthread_mutex_unlock(&fs_log_lock);
	errno = saved_errno;
}

void fs_log(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fs_log_va(level, fmt, ap);
	va_end(ap);
}

/* Called with the lock held. */
static void fs_log_close_locked(void)
{
	if (fs_log_dest == FS_DEST_FILE)
		close(fs_log_fd);
	else if (fs_log_dest == FS_DEST_SYSLOG)
		closelog();
	fs_log_fd = -1;
	free(fs_log_path);
	fs_log_path = NULL;
	fs_log_dest = FS_DEST_STDERR;
}

int fs_log_init(const struct fs_config *cfg)
{
	char *path = NULL;
	int fd = -1;

	if (cfg->logfile) {
		path = strdup(cfg->logfile);
		if (!path) {
			fprintf(stderr, "bucketfs: out of memory\n");
			return -1;
		}
		fd = fs_log_open_file(path);
		if (fd < 0) {
			fprintf(stderr, "bucketfs: cannot open log file %s: %s\n", path,
			        strerror(errno));
			free(path);
			return -1;
		}
	}

	pthread_mutex_lock(&fs_log_lock);
	fs_log_close_locked();
	if (path) {
		fs_log_dest = FS_DEST_FILE;
		fs_log_fd = fd;
		fs_log_path = path;
	} else if (!cfg->foreground && !cfg->debug) {
		openlog("bucketfs", LOG_PID, LOG_DAEMON);
		fs_log_dest = FS_DEST_SYSLOG;
	}
	fs_log_reopen_wanted = 0;
	atomic_store(&fs_log_level, cfg->log_level);
	pthread_mutex_unlock(&fs_log_lock);
	return 0;
}

void fs_log_close(void)
{
	pthread_mutex_lock(&fs_log_lock);
	fs_log_close_locked();
	atomic_store(&fs_log_level, FS_LOG_WARNING);
	pthread_mutex_unlock(&fs_log_lock);
}

void fs_log_reopen(void)
{
	fs_log_reopen_wanted = 1;
}

static void fs_log_sighup(int sig)
{
	(void)sig;
	fs_log_reopen();
}

int fs_log_handle_sighup(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = fs_log_sighup;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	if (sigaction(SIGHUP, &sa, NULL) < 0)
		return -errno;
	return 0;
}
