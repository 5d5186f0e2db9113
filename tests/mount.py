"""Mounting the real bucketfs binary in tests.

    with Mount(server, bucket, tmp_path, opts={'list_ttl': 2}) as m:
        m.mp                  # the mount point
        m.stats()             # {'requests_list': 3, ...} via `bucketfs stats`
        m.remount()           # unmount (daemon must exit 0) + mount again
    # on exit: unmounted; the daemon exited 0; its log holds no error lines

The daemon runs in the foreground (-f) with its log on stderr, captured in a
file per mount; `errors()` returns the lines logged at level error.

Sanitizers and valgrind.  Every mount runs the daemon with ASAN_OPTIONS,
UBSAN_OPTIONS and TSAN_OPTIONS that write any report to
<workdir>/sanitizer.<pid> (ignored by a plain build); unmount fails the test
if such a file exists or the daemon's exit status is not 0.  With
BUCKETFS_VALGRIND=1 the daemon runs under valgrind memcheck (a plain build:
valgrind cannot run an ASan one) with a full leak check; its report goes to
<workdir>/valgrind-<n>.log and unmount fails on any error or definite or
indirect leak.  tests/valgrind.supp holds the suppressions.
"""

import concurrent.futures
import glob
import os
import re
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get('BUCKETFS_BUILD', os.path.join(ROOT, 'build'))
VALGRIND = os.environ.get('BUCKETFS_VALGRIND', '0') == '1'
VALGRIND_EXIT = 97  # the daemon's exit status when valgrind found errors or leaks


def sanitizer_env(log_prefix, halt_on_ub=False):
    """Sanitizer settings for a process of the tests.  ASan, LSan and TSan
    reports go to LOG_PREFIX.<pid> (a file the tests check: a TSan report
    does not change the exit status) and ASan's exit status is 99.  UBSan's
    reports go to stderr whatever log_path says when it is combined with ASan
    (gcc 12), so a Mount reads them in the daemon's log (sanitizer_lines());
    HALT_ON_UB makes a UBSan report end the process with status 1 instead,
    for processes whose stderr nobody reads."""
    common = 'log_path=%s:print_stacktrace=1' % log_prefix
    return {
        # not strict_string_checks: it flags strndup() of a buffer without a
        # NUL, which is legal (the unit tests keep it, tools/test.sh)
        'ASAN_OPTIONS': common + ':detect_leaks=1:abort_on_error=0:exitcode=99',
        'UBSAN_OPTIONS': common + ':halt_on_error=%d' % halt_on_ub,
        'TSAN_OPTIONS': common + ':halt_on_error=0:exitcode=99:second_deadlock_stack=1'
                                 ':suppressions=%s' % os.path.join(HERE, 'tsan.supp'),
    }


SANITIZER_LINE = re.compile(r'runtime error:|(Address|Leak|Thread|UndefinedBehavior)Sanitizer')


def sanitizer_reports(log_prefix, pid=None):
    """[(path, text)] of the report files under LOG_PREFIX (of PID only if given)."""
    pattern = log_prefix + ('.%d' % pid if pid is not None else '.*')
    return [(p, open(p, errors='replace').read()) for p in sorted(glob.glob(pattern))]


def format_reports(reports, limit=20000):
    return '\n'.join('--- %s\n%s' % (p, t[:limit]) for p, t in reports)


def thread_stacks(pid, limit=30000):
    """The stack of every thread of process PID (gdb), for a daemon that
    hangs: what a test that gives up on it reports."""
    try:
        out = subprocess.run(['gdb', '-p', str(pid), '-batch', '-nx',
                              '-ex', 'thread apply all bt'],
                             capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return '(no stacks: %r)' % e
    return out[-limit:]


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
        self.sanitizer_log = os.path.join(self.workdir, 'sanitizer')
        self.env.update(sanitizer_env(self.sanitizer_log))
        self.env.update(env or {})
        self.valgrind = VALGRIND
        self.valgrind_log = None
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

    def valgrind_argv(self):
        self.valgrind_log = os.path.join(self.workdir, 'valgrind-%d.log' % self.count)
        return ['valgrind', '--tool=memcheck', '--leak-check=full',
                '--show-leak-kinds=definite,indirect', '--errors-for-leak-kinds=definite,indirect',
                '--error-exitcode=%d' % VALGRIND_EXIT, '--num-callers=30', '--track-fds=no',
                '--suppressions=%s' % os.path.join(HERE, 'valgrind.supp'),
                '--log-file=%s' % self.valgrind_log]

    def mount(self, timeout=30):
        self.count += 1
        log = os.path.join(self.workdir, 'bucketfs-%d.log' % self.count)
        self.logs.append(log)
        argv = self.argv()
        if self.valgrind:
            argv = self.valgrind_argv() + argv
            timeout *= 4
        self.proc = subprocess.Popen(argv, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=open(log, 'w'))
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mp):
            if self.proc.poll() is not None:
                raise AssertionError('bucketfs exited with %d before mounting:\n%s%s' % (
                    self.proc.returncode, open(log).read(),
                    format_reports(sanitizer_reports(self.sanitizer_log, self.proc.pid))))
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError('bucketfs did not mount within %ss' % timeout)
            time.sleep(0.05)
        return self

    def unmount(self, timeout=60):
        if self.proc is None:
            return
        if self.valgrind:
            timeout *= 4
        subprocess.run(['fusermount3', '-u', self.mp], check=True)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stacks = thread_stacks(self.proc.pid)
            self.proc.kill()
            raise AssertionError('bucketfs did not exit within %ss of unmount; its threads:\n%s'
                                 '\nits log ends:\n%s' % (timeout, stacks,
                                                          open(self.logs[-1]).read()[-5000:]))
        pid, self.proc = self.proc.pid, None
        log = open(self.logs[-1]).read()
        reports = sanitizer_reports(self.sanitizer_log, pid)
        assert not reports, 'bucketfs (exit status %d) left sanitizer reports:\n%s' % (
            rc, format_reports(reports))
        san = self.sanitizer_lines()
        assert not san, 'bucketfs (exit status %d) logged sanitizer reports:\n%s' % (
            rc, log[-30000:])
        if self.valgrind:
            vlog = open(self.valgrind_log, errors='replace').read()
            assert rc == 0, 'bucketfs under valgrind exited with %d%s; valgrind log:\n%s' % (
                rc, ' (errors or leaks)' if rc == VALGRIND_EXIT else '', vlog[-30000:])
            assert 'ERROR SUMMARY: 0 errors' in vlog, 'valgrind found errors:\n' + vlog[-30000:]
        assert rc == 0, 'bucketfs exited with %d:\n%s' % (rc, log)
        errs = self.errors()
        assert not errs, 'bucketfs logged errors:\n' + '\n'.join(errs)

    def kill9(self):
        """kill -9 of the daemon (a crash); the dead mount is detached.  (No
        leak check: the process never reaches exit.)"""
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
            reports = sanitizer_reports(self.sanitizer_log)
            if reports:
                print('sanitizer reports:\n' + format_reports(reports))
            if self.valgrind_log and os.path.exists(self.valgrind_log):
                print('valgrind log:\n' + open(self.valgrind_log, errors='replace').read()[-20000:])

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

    def sanitizer_lines(self):
        """The lines of a sanitizer report in the daemon's logs (UBSan's; no
        expected_errors apply)."""
        return [line.rstrip() for path in self.logs for line in open(path, errors='replace')
                if SANITIZER_LINE.search(line)]

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
