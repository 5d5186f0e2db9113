"""The nightly backup of issue 5, end to end: a daemon-mode mount (no -f),
rsync into a backup directory with the crontab line of tools/examples, then
a night of changes made with aws-cli, a remount as after a reboot, and an
rsync that moves only what changed, with the request counts to prove it.

The daemon is found by the pid in its log lines (logfile=), and is reaped
by this process (a child subreaper while mounting), so its exit status is
checked too.
"""

import ctypes
import math
import os
import shlex
import subprocess
import time

from mount import bucketfs_bin, bulk_put

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLES = os.path.join(ROOT, 'tools', 'examples')

PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


class Daemon:
    """A daemon-mode mount: `bucketfs BUCKET MP -o ...` returns once mounted."""

    def __init__(self, server, bucket, workdir, opts=None, env=None):
        self.server = server
        self.bucket = bucket
        self.workdir = str(workdir)
        self.mp = os.path.join(self.workdir, 'mnt')
        self.log = os.path.join(self.workdir, 'bucketfs.log')
        self.opts = {'url': server.endpoint, 'use_path_request_style': None,
                     'cache_dir': os.path.join(self.workdir, 'cache'), 'dbglevel': 'info',
                     'logfile': self.log}
        self.opts.update(opts or {})
        self.log = self.opts['logfile']
        self.env = server.client_env()
        self.env.update(env or {})
        self.pid = None
        os.makedirs(self.mp, exist_ok=True)

    def argv(self):
        o = ','.join(k if v is None else '%s=%s' % (k, v) for k, v in self.opts.items())
        return [bucketfs_bin(), self.bucket, self.mp, '-o', o]

    def mount(self):
        start = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        try:
            p = subprocess.run(self.argv(), env=self.env, capture_output=True, text=True,
                               timeout=120)
        finally:
            _libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        assert p.returncode == 0, 'bucketfs exited %d: %s' % (p.returncode, p.stderr)
        assert p.stderr == '' and p.stdout == '', (p.stdout, p.stderr)
        # it returned, so the tree must be usable now
        assert os.path.ismount(self.mp)
        with open(self.log) as f:
            f.seek(start)
            lines = [ln for ln in f if ' info: mounted ' in ln]
        assert lines, 'no "mounted" line in %s' % self.log
        self.pid = int(lines[-1].split('bucketfs[', 1)[1].split(']', 1)[0])
        assert os.path.exists('/proc/%d' % self.pid)
        return self

    def unmount(self, timeout=60):
        subprocess.run(['fusermount3', '-u', self.mp], check=True)
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            assert time.monotonic() < deadline, 'daemon %d still alive' % self.pid
            time.sleep(0.05)
        self.pid = None
        assert os.waitstatus_to_exitcode(status) == 0, self.text()[-3000:]
        assert not os.path.ismount(self.mp)
        assert not self.errors(), self.errors()

    def kill(self):
        if self.pid is None:
            return
        subprocess.run(['fusermount3', '-u', '-z', self.mp])
        try:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        self.pid = None

    def text(self):
        return open(self.log, errors='replace').read()

    def errors(self):
        return [ln for ln in self.text().splitlines() if ' err: ' in ln]

    def requests(self):
        p = subprocess.run([bucketfs_bin(), 'stats', self.mp], capture_output=True, text=True,
                           check=True)
        s = dict(line.split() for line in p.stdout.splitlines())
        return {k[len('requests_'):]: int(v) for k, v in s.items() if k.startswith('requests_')}


def delta(after, before):
    return {k: after[k] - before.get(k, 0) for k in after}


def crontab_command(mp, backup):
    """The command of tools/examples/crontab's line, for these paths."""
    lines = [ln for ln in open(os.path.join(EXAMPLES, 'crontab'))
             if ln.strip() and not ln.lstrip().startswith('#')]
    assert len(lines) == 1, lines
    fields = lines[0].split(None, 5)
    assert len(fields) == 6 and fields[:5] == ['30', '2', '*', '*', '*'], fields
    cmd = fields[5].strip()
    assert cmd.startswith('mountpoint -q /mnt/mybucket && rsync '), cmd
    return cmd.replace('/mnt/mybucket', shlex.quote(mp)).replace(
        '/home/user/myS3backup', shlex.quote(backup))


def snapshot(root):
    """{relative path: (mode, size, mtime_ns, contents)} of every entry."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            body = open(p, 'rb').read() if name in filenames else None
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, body)
    return out


def file_mtimes(root):
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = os.lstat(p).st_mtime_ns
    return out


def put_all(server, bucket, items, workers=16):
    """{key: (body, mtime or None)}: objects with mtime carry s3fs's
    x-amz-meta-mtime; bulk_put for the others."""
    import concurrent.futures
    plain = {k: b for k, (b, mt) in items.items() if mt is None}
    meta = {k: (b, mt) for k, (b, mt) in items.items() if mt is not None}

    def put(kv):
        key, (body, mtime) = kv
        for attempt in range(5):
            status, _, data = server.request(
                'PUT', '/%s/%s' % (bucket, key), body=body,
                headers={'x-amz-meta-mtime': mtime, 'x-amz-meta-mode': '33188'})
            if status == 200:
                return
            time.sleep(0.2 * (attempt + 1))
        raise AssertionError('PUT %s: HTTP %d %s' % (key, status, data[:300]))
    bulk_put(server, bucket, plain, workers)
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        list(ex.map(put, meta.items()))


def rsync(*args):
    p = subprocess.run(['rsync'] + list(args), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return p.stdout


N_DIRS, N_SUB, N_FILES = 10, 10, 20      # 2,000 objects in 110 directories
# long enough that one rsync walk (slower under ASan or load) fits in one TTL,
# so a night lists each directory once
LIST_TTL = 8
# objects of the 2,000 written through the mount (cp into it), not with aws;
# 0 writes them all with aws (for a read-only build)
N_THROUGH = int(os.environ.get('BUCKETFS_BACKUP_THROUGH_MOUNT', '20'))


def test_nightly_backup(s3server, bucket, tmp_path):
    timings = {}
    t_all = time.monotonic()
    n = N_DIRS * N_SUB * N_FILES
    keys = ['d%d/s%d/f%02d.dat' % (d, s, f)
            for d in range(N_DIRS) for s in range(N_SUB) for f in range(N_FILES)]
    # the last N_THROUGH files are written through the mount
    through = set(keys[len(keys) - N_THROUGH:])
    # half carry s3fs's x-amz-meta-mtime (a fraction on some), half do not
    items = {}
    for i, k in enumerate(keys):
        body = os.urandom(100 + (i * 37) % 3000)
        mtime = None if i % 2 else ('%d' % (1500000000 + i) if i % 4 else
                                    '%d.%06d' % (1500000000 + i, i))
        items[k] = (body, mtime)
    t0 = time.monotonic()
    put_all(s3server, bucket, {k: v for k, v in items.items() if k not in through})
    timings['put %d' % n] = time.monotonic() - t0

    backup = str(tmp_path / 'myS3backup')
    os.mkdir(backup)
    d = Daemon(s3server, bucket, tmp_path, opts={'list_ttl': LIST_TTL})
    try:
        # ---------------------------------------------------- night 1
        t0 = time.monotonic()
        d.mount()
        timings['mount'] = time.monotonic() - t0
        t0 = time.monotonic()
        for k in sorted(through):
            path = os.path.join(d.mp, k)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'wb') as f:
                f.write(items[k][0])
            if items[k][1] is not None:      # as cp -p or rsync -t would
                mt = int(float(items[k][1]) * 1e9)
                os.utime(path, ns=(mt, mt))
        timings['write %d via mount' % N_THROUGH] = time.monotonic() - t0
        cron = crontab_command(d.mp, backup)
        t0 = time.monotonic()
        p = subprocess.run(['sh', '-c', cron], capture_output=True, text=True, timeout=600)
        timings['night 1 rsync'] = time.monotonic() - t0
        assert p.returncode == 0, p.stderr
        subprocess.run(['diff', '-r', d.mp, backup], check=True)
        src, dst = file_mtimes(d.mp), file_mtimes(backup)
        assert len(src) == n
        assert dst == src
        for i, k in enumerate(keys):
            mt = items[k][1]
            if mt is not None:      # the metadata's mtime, to the microsecond
                assert abs(src[k] - int(float(mt) * 1e9)) < 1000, (k, mt, src[k])
        first = d.requests()
        print('night 1: requests %s' % first)
        assert first['put'] >= len(through)
        d.unmount()
        # what was written through the mount is in the bucket, as written
        for k in sorted(through):
            status, hdrs, body = s3server.request('GET', '/%s/%s' % (bucket, k))
            assert status == 200 and body == items[k][0], (k, status)

        # ---------------------------------------------------- the day
        # the same mtimes after a remount, from the index alone
        d.mount()
        assert file_mtimes(d.mp) == src
        d.unmount()
        time.sleep(1.1)      # LastModified has whole seconds on some servers
        staging = tmp_path / 'staging'
        added = ['d%d/s%d/new%02d.dat' % (i % N_DIRS, i, i) for i in range(9)] + \
                ['newdir/deep/new.dat']
        # with and without x-amz-meta-mtime, spread over the tree
        modified = [keys[10 + 200 * j + j % 2] for j in range(10)]
        deleted = [keys[110 + 200 * j + j % 2] for j in range(10)]
        assert not set(modified) & set(deleted) and len(set(modified + deleted)) == 20
        new_items = {}
        for i, k in enumerate(added):
            new_items[k] = os.urandom(50 + i)
        for i, k in enumerate(modified):
            old = items[k][0]
            new_items[k] = os.urandom(len(old) if i % 2 == 0 else len(old) + 1)
        for k, body in new_items.items():
            f = staging / k
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(body)
        s3server.aws('s3', 'cp', '--recursive', '--quiet', str(staging), 's3://%s/' % bucket)
        inc = []
        for k in deleted:
            inc += ['--include', k]
        s3server.aws('s3', 'rm', '--recursive', '--quiet', 's3://%s/' % bucket,
                     '--exclude', '*', *inc)

        # ---------------------------------------------------- night 2: after a reboot
        d.mount()
        s0 = d.requests()
        time.sleep(LIST_TTL + 0.5)
        t0 = time.monotonic()
        out = rsync('-a', '--delete', '--itemize-changes', d.mp + '/', backup + '/')
        timings['night 2 rsync'] = time.monotonic() - t0
        s1 = d.requests()
        changes = out.splitlines()
        sent = sorted(ln.split(' ', 1)[1] for ln in changes if ln.startswith('>f'))
        gone = sorted(ln.split(' ', 1)[1].strip() for ln in changes if ln.startswith('*deleting'))
        print('night 2: requests %s (from mount %s), itemized:\n%s' % (
            delta(s1, s0), s1, out))
        assert sent == sorted(added + modified)
        assert gone == sorted(deleted)
        subprocess.run(['diff', '-r', d.mp, backup], check=True)
        assert file_mtimes(backup) == file_mtimes(d.mp)
        # one GET per new or changed object (it brings metadata and contents);
        # nothing for the 1,980 others
        assert s1['get'] == 20, s1
        assert s1['head'] == 0, s1
        assert s1['list'] <= math.ceil(n / 1000) + 2, s1

        # ---------------------------------------------------- night 3: nothing changed
        time.sleep(LIST_TTL + 0.5)
        t0 = time.monotonic()
        out = rsync('-a', '--delete', '--itemize-changes', d.mp + '/', backup + '/')
        timings['night 3 rsync'] = time.monotonic() - t0
        s2 = d.requests()
        print('night 3: requests %s' % delta(s2, s1))
        assert out == '', out
        assert delta(s2, s1)['get'] == 0 and delta(s2, s1)['head'] == 0, delta(s2, s1)
        assert delta(s2, s1)['list'] <= math.ceil(n / 1000) + 2, delta(s2, s1)
        d.unmount()

        # ---------------------------------------------------- the mount is gone
        before = snapshot(backup)
        p = subprocess.run(['sh', '-c', crontab_command(d.mp, backup)], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode != 0      # mountpoint -q said no; rsync did not run
        assert snapshot(backup) == before
        # a wrapper with --delete in the same guard would not have run either
        assert len(before) > n
    finally:
        d.kill()
        for k, v in timings.items():
            print('%-16s %6.1f s' % (k, v))
        print('total %.1f s (%s)' % (time.monotonic() - t_all, s3server.kind))
