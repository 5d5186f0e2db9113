/* bucketfs: the mount's kernel read-ahead (see fs_readahead_arm()). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <sys/types.h>

#include "fs.h"

/* The kernel reads ahead of a FUSE file at most 128 KiB at a time (the
 * default of the mount's bdi, which the answer to FUSE_INIT can only lower),
 * so a sequential reader costs one request per 128 KiB.  Raise the mount's
 * read-ahead to 1 MiB, the largest read libfuse 3.14 negotiates (max_pages
 * from max_write): 8 times fewer requests.  Only root may write it; anyone
 * else keeps the default.
 *
 * When: after the kernel has taken the answer to INIT (which would clamp an
 * earlier value back to 128 KiB), so at the first getattr, which comes after
 * it.  How: the mount's device number comes from /proc/self/mountinfo, not
 * from stat() of the mount point, which would be a FUSE request of the
 * daemon to itself (it was, from a thread started before the FUSE loop, and
 * under valgrind, which does not release its lock around a stat, that
 * deadlocked the daemon before the loop could answer INIT). */
#define FS_READAHEAD_KB 1024

/* Undoes mountinfo's octal escapes (\040 for a space, ...) in place. */
static void mountinfo_unescape(char *s)
{
	char *w = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*w++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 3;
		} else {
			*w++ = *s;
		}
	}
	*w = '\0';
}

/* The device number of the topmost mount on MP (0 when not found). */
static dev_t mount_dev_of(const char *mp)
{
	FILE *f = fopen("/proc/self/mountinfo", "r");
	char *line = NULL;
	size_t cap = 0;
	dev_t dev = 0;

	if (!f)
		return 0;
	while (getline(&line, &cap, f) > 0) {
		unsigned maj, min;
		char *point;
		int n = 0;

		/* "ID PARENT MAJ:MIN ROOT POINT ...": POINT starts after the 4th field */
		if (sscanf(line, "%*d %*d %u:%u %*s %n", &maj, &min, &n) != 2 || n == 0)
			continue;
		point = line + n;
		point[strcspn(point, " \n")] = '\0';
		mountinfo_unescape(point);
		if (strcmp(point, mp) == 0)
			dev = makedev(maj, min); /* later lines are mounted on top */
	}
	free(line);
	fclose(f);
	return dev;
}

static void raise_readahead(const char *mp)
{
	char path[96];
	unsigned kb = 0;
	dev_t dev = mount_dev_of(mp);
	FILE *f;

	if (!dev) {
		fs_log(FS_LOG_DEBUG, "kernel read-ahead stays at its default (%s not in mountinfo)",
		       mp);
		return;
	}
	snprintf(path, sizeof(path), "/sys/class/bdi/%u:%u/read_ahead_kb", major(dev), minor(dev));
	f = fopen(path, "r+");
	if (!f) {
		fs_log(FS_LOG_DEBUG, "kernel read-ahead stays at its default (%s: %s)", path,
		       strerror(errno));
		return;
	}
	if (fscanf(f, "%u", &kb) == 1 && kb < FS_READAHEAD_KB) {
		rewind(f);
		if (fprintf(f, "%u\n", FS_READAHEAD_KB) < 0 || fflush(f) != 0)
			fs_log(FS_LOG_DEBUG, "kernel read-ahead stays at %u KiB (%s: %s)", kb, path,
			       strerror(errno));
		else
			fs_log(FS_LOG_DEBUG, "kernel read-ahead raised from %u to %u KiB", kb,
			       FS_READAHEAD_KB);
	}
	fclose(f);
}

static char *armed; /* the mount point, until the first getattr takes it */

void fs_readahead_arm(const char *mountpoint)
{
	char *mp = strdup(mountpoint);

	if (mp)
		free(__atomic_exchange_n(&armed, mp, __ATOMIC_ACQ_REL));
}

void fs_readahead_apply(void)
{
	char *mp;

	if (!__atomic_load_n(&armed, __ATOMIC_ACQUIRE))
		return;
	mp = __atomic_exchange_n(&armed, NULL, __ATOMIC_ACQ_REL);
	if (mp) {
		raise_readahead(mp);
		free(mp);
	}
}

void fs_readahead_disarm(void)
{
	free(__atomic_exchange_n(&armed, NULL, __ATOMIC_ACQ_REL));
}
