"""Mounting the real bucketfs binary in tests.

    with Mount(server, bucket, tmp_path, opts={'list_ttl': 2}) as m:
        m.mp                  # the mount point
        m.stats()             # {'requests_list': 3, ...} via `bucketfs stats`
        m.remount()           # unmount (daemon must exit 0) + mount again
    # on exit: unmounted; the daemon exited 0; its log holds no error lines

The daemon runs in the foreground (-f) with its log on stderr, captured in a
file per mount; `errors()` returns the lines logged at level error.
"""

import concurrent.futures
import os
import re
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get('BUCKETFS_BUILD', os.path.join(ROOT, 'build'))


def bucketfs_bin():
    path = os.path.join(BUILD, 'fs', 'bucketfs')
    if not os.path.exists(path):
        raise AssertionError('%s not built (BUCKETFS_BUILD=%s)' % (path, BUILD))
    return path


class Mount:
    def __init__(self, server, bucket, workdir, opts=None, prefix=None, env=None,
                 cache_dir=None):
        self.server = server
        self.bucket = bucket
        self.workdir = str(workdir)
        self.mp = os.path.join(self.workdir, 'mnt')
        self.cache_dir = cache_dir or os.path.join(self.workdir, 'cache')
        self.prefix = prefix
        self.opts = {'url': server.endpoint, 'use_path_request_style': None,
                     'cache_dir': self.cache_dir, 'dbglevel': 'info', 'list_ttl': 60}
        self.opts.update(opts or {})
        self.env = server.client_env()
        self.env.update(env or {})
        self.proc = None
        self.logs = []
        self.count = 0
        # regexes of error lines a test provokes on purpose (errors() skips them)
        self.expected_errors = []
        os.makedirs(self.mp, exist_ok=True)

    # ------------------------------------------------------------ lifecycle
    def argv(self):
        o = ','.join(k if v is None else '%s=%s' % (k, v) for k, v in self.opts.items())
        src = self.bucket + (':/' + self.prefix if self.prefix else '')
        return [bucketfs_bin(), src, self.mp, '-f', '-o', o]

    def mount(self, timeout=30):
        self.count += 1
        log = os.path.join(self.workdir, 'bucketfs-%d.log' % self.count)
        self.logs.append(log)
        self.proc = subprocess.Popen(self.argv(), env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=open(log, 'w'))
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mp):
            if self.proc.poll() is not None:
                raise AssertionError('bucketfs exited with %d before mounting:\n%s' % (
                    self.proc.returncode, open(log).read()))
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError('bucketfs did not mount within %ss' % timeout)
            time.sleep(0.05)
        return self

    def unmount(self, timeout=60):
        if self.proc is None:
            return
        subprocess.run(['fusermount3', '-u', self.mp], check=True)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError('bucketfs did not exit within %ss of unmount' % timeout)
        self.proc = None
        log = open(self.logs[-1]).read()
        assert rc == 0, 'bucketfs exited with %d:\n%s' % (rc, log)
        errs = self.errors()
        assert not errs, 'bucketfs logged errors:\n' + '\n'.join(errs)

    def kill9(self):
        """kill -9 of the daemon (a crash); the dead mount is detached."""
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc = None
        subprocess.run(['fusermount3', '-u', '-z', self.mp], capture_output=True)
        deadline = time.monotonic() + 10
        while os.path.ismount(self.mp) and time.monotonic() < deadline:
            time.sleep(0.05)

    def remount(self):
        self.unmount()
        return self.mount()

    def __enter__(self):
        return self.mount()

    def __exit__(self, exc_type, exc, tb):
        if self.proc is None:
            return
        if exc_type is None:
            self.unmount()
        else:
            subprocess.run(['fusermount3', '-u', '-z', self.mp])
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            print('bucketfs log:\n' + open(self.logs[-1]).read()[-20000:])

    # ------------------------------------------------------------ looking in
    def errors(self):
        out = []
        for path in self.logs:
            for line in open(path, errors='replace'):
                # fs/log.c writes "bucketfs[PID] err: ..." for level error
                if (' err: ' in line or ' error: ' in line or 'AddressSanitizer' in line
                        or 'runtime error' in line or 'LeakSanitizer' in line):
                    if not any(re.search(r, line) for r in self.expected_errors):
                        out.append(line.rstrip())
        return out

    def log_text(self):
        return ''.join(open(p, errors='replace').read() for p in self.logs)

    def stats(self):
        p = subprocess.run([bucketfs_bin(), 'stats', self.mp], capture_output=True, text=True,
                           check=True)
        return {k: int(v) for k, v in (line.split() for line in p.stdout.splitlines())}

    def requests(self):
        s = self.stats()
        return {k[len('requests_'):]: v for k, v in s.items() if k.startswith('requests_')}


def bulk_put(server, bucket, items, workers=16):
    """Puts {key: bytes} with signed requests from a thread pool."""
    def put(kv):
        key, body = kv
        for attempt in range(5):
            status, _, data = server.request('PUT', '/%s/%s' % (bucket, key), body=body)
            if status == 200:
                return
            time.sleep(0.2 * (attempt + 1))
        raise AssertionError('PUT %s: HTTP %d %s' % (key, status, data[:300]))
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        list(ex.map(put, items.items()))


def tree_of(root):
    """{relative path: (type, size, sha256 or link target)} of a directory."""
    import hashlib
    import stat
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ('dir', 0, None)
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ('link', 0, os.readlink(p))
            else:
                h = hashlib.sha256()
                with open(p, 'rb') as f:
                    for chunk in iter(lambda: f.read(1 << 20), b''):
                        h.update(chunk)
                out[rel] = ('file', st.st_size, h.hexdigest())
    return out
