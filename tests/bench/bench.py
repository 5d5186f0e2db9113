#!/usr/bin/python3
"""bucketfs vs s3fs-fuse vs rclone mount, side by side in one run (issue 6).

    /usr/bin/python3 tests/bench/bench.py [--quick] [--server s3rver|swift]
        [--out FILE] [--only bucketfs,s3fs,rclone] [--repeats N] [--keep]

(tests/bench/run.sh builds bucketfs first if needed.)  It starts a local S3
server on 127.0.0.1, fills a bucket, mounts each filesystem on it in turn
(bucketfs from $BUCKETFS_BUILD or build/, Debian's s3fs and rclone with the
performance settings printed in the report), runs the workloads of issue 6 on
each, and prints a Markdown table: the median time per workload per
filesystem, bucketfs / each peer, the raw limits (one curl GET, paged
ListObjectsV2, the same workload on a local directory), and the requests each
filesystem made, counted from the server's own request log.  The report is
also written to --out (default tests/bench/last-run.md), with the
`bucketfs stats` counters and the peak RSS of each daemon.

Every run of a workload: the kernel page cache is dropped first (as root:
echo 3 > /proc/sys/vm/drop_caches), "cold" means a fresh mount with a fresh
cache directory, "after remount" an unmount + mount that keeps it.  Write
workloads are timed until the data is in the bucket (checked with requests
of our own), so a filesystem that uploads in the background is not credited
for returning early.

--quick (for CI, < 3 min): small sizes, one repeat; it always produces the
table, with "FAIL: ..." in the cells of a filesystem that could not mount.
"""

import argparse
import concurrent.futures
import contextlib
import hashlib
import http.client
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
ROOT = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)

from servers.servers import (S3rver, Swift, free_port, sigv4_headers,  # noqa: E402
                             DEFAULT_LIFETIME, S3RVER_JS)

BUILD = os.environ.get('BUCKETFS_BUILD', os.path.join(ROOT, 'build'))
MiB = 1 << 20
GiB = 1 << 30
BENCH_UA = 'bucketfs-bench'  # our own requests: not counted
EXPIRE_TTL = 3  # list_ttl of bucketfs after a remount: see part_rsync


def log(msg):
    print('[bench %s] %s' % (time.strftime('%H:%M:%S'), msg), file=sys.stderr, flush=True)


# ==================================================================== config
class Sizes:
    def __init__(self, quick, repeats=None):
        self.quick = quick
        if quick:
            self.big = 64 * MiB
            self.tree_dirs, self.tree_files = 10, 20      # 200 objects
            self.small_files = 100
            self.random_reads = 200
            self.repeats = 1
            self.index_dirs, self.index_files = 0, 0      # no 100k bucket
            self.tree_max = 8 * 1024
        else:
            self.big = 1 * GiB
            self.tree_dirs, self.tree_files = 100, 100    # 10,000 objects
            self.small_files = 1000
            self.random_reads = 200
            self.repeats = 3
            self.index_dirs, self.index_files = 1000, 100  # 100,000 objects
            self.tree_max = 8 * 1024
        if repeats:
            self.repeats = repeats

    @property
    def tree_objects(self):
        return self.tree_dirs * self.tree_files


def human(n):
    for unit, size in (('GiB', GiB), ('MiB', MiB), ('KiB', 1024)):
        if n >= size:
            v = n / size
            return ('%d %s' % (v, unit)) if v == int(v) else ('%.1f %s' % (v, unit))
    return '%d B' % n


# ==================================================================== server
class LoggedS3rver(S3rver):
    """s3rver with a request log (tests/bench/s3rver-logged.js): one line
    per request, "METHOD URL STATUS USER-AGENT"."""

    def start(self):
        os.makedirs(self.data_dir, exist_ok=True)
        self.request_log = os.path.join(self.base_dir, 'requests.log')
        open(self.request_log, 'a').close()
        env = dict(os.environ)
        env['NODE_OPTIONS'] = (env.get('NODE_OPTIONS', '') + ' --openssl-legacy-provider').strip()
        if not os.path.exists(S3RVER_JS):
            raise RuntimeError('s3rver not installed (%s); run tools/deps.sh' % S3RVER_JS)
        for attempt in range(5):
            self.port = free_port()
            cmd = ['timeout', str(self.lifetime), 'node', os.path.join(HERE, 's3rver-logged.js'),
                   self.host, str(self.port), self.data_dir, self.request_log]
            out = open(os.path.join(self.base_dir, 's3rver.log'), 'ab')
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=out, start_new_session=True, cwd=self.base_dir)
            out.close()
            try:
                self.wait_ready(self.proc)
                return self
            except RuntimeError:
                self._kill()
                if attempt == 4:
                    raise
        raise RuntimeError('s3rver did not start')

    def log_path(self):
        return self.request_log

    def parse_line(self, line):
        parts = line.split()
        if len(parts) >= 2 and BENCH_UA not in line:
            return parts[0], parts[1]
        return None


class LoggedSwift(Swift):
    """Swift; requests counted from its proxy-server log: the lines of S3
    requests (paths not under /v1/, which are s3api's own subrequests)."""

    _line = re.compile(r'proxy-server: \S+ \S+ \S+ (GET|PUT|HEAD|POST|DELETE) (\S+) HTTP/')

    def log_path(self):
        return os.path.join(self.base_dir, 'log', 'proxy-server.log')

    def parse_line(self, line):
        m = self._line.search(line)
        if (m and not m.group(2).startswith('/v1/') and BENCH_UA not in line
                and 'S3' not in line.split()[-1:]):
            return m.group(1), urllib.parse.unquote(m.group(2))
        return None


def classify(method, target, bucket=None):
    path, _, query = target.partition('?')
    parts = path.lstrip('/').split('/', 1)
    if method == 'GET' and (len(parts) == 1 or parts[1] == ''):
        return 'LIST'
    if method == 'POST' or 'uploadId' in query or 'uploads' in query:
        return 'MULTIPART'
    return method


class RequestCounter:
    """Counts requests from the server's log between two marks (byte
    offsets into the log, so a mark costs nothing however long it grows)."""

    def __init__(self, server):
        self.server = server

    def _size(self):
        try:
            return os.path.getsize(self.server.log_path())
        except OSError:
            return 0

    def _settled(self):
        """The log's size once the server stopped writing to it."""
        size = self._size()
        for _ in range(20):
            time.sleep(0.05)
            now = self._size()
            if now == size:
                return size
            size = now
        return size

    def mark(self):
        return self._settled()

    def since(self, mark):
        end = self._settled()
        by, n = {}, 0
        try:
            with open(self.server.log_path(), 'rb') as f:
                f.seek(mark)
                data = f.read(end - mark).decode('utf-8', 'replace')
        except OSError:
            data = ''
        for line in data.splitlines():
            req = self.server.parse_line(line)
            if req:
                k = classify(*req)
                by[k] = by.get(k, 0) + 1
                n += 1
        return n, by


class S3Direct:
    """Our own signed requests over one keep-alive connection per thread."""

    def __init__(self, server):
        self.srv = server
        self.local = threading.local()

    def _conn(self):
        c = getattr(self.local, 'conn', None)
        if c is None:
            c = http.client.HTTPConnection(self.srv.host, self.srv.port, timeout=120)
            self.local.conn = c
        return c

    def request(self, method, path, query=None, body=b'', headers=None):
        qpath = urllib.parse.quote(path, safe='/-_.~')
        host = '%s:%d' % (self.srv.host, self.srv.port)
        for attempt in range(4):
            hdrs, cq = sigv4_headers(method, host, qpath, query, body, self.srv.access_key,
                                     self.srv.secret_key, self.srv.region, headers)
            hdrs['user-agent'] = BENCH_UA
            c = self._conn()
            try:
                c.request(method, qpath + ('?' + cq if cq else ''), body=body or None,
                          headers=hdrs)
                r = c.getresponse()
                data = r.read()
                if r.status >= 500 and attempt < 3:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                return r.status, {k.lower(): v for k, v in r.getheaders()}, data
            except (OSError, http.client.HTTPException):
                c.close()
                self.local.conn = None
                if attempt == 3:
                    raise
                time.sleep(0.1)
        raise RuntimeError('unreachable')

    def put(self, bucket, key, body):
        st, _, data = self.request('PUT', '/%s/%s' % (bucket, key), body=body)
        if st != 200:
            raise RuntimeError('PUT %s: HTTP %d %s' % (key, st, data[:200]))

    def head(self, bucket, key):
        st, h, _ = self.request('HEAD', '/%s/%s' % (bucket, key))
        return st, h

    def list_all(self, bucket, prefix=''):
        """Paged ListObjectsV2 -> ([(key, size)], pages)."""
        out, token, pages = [], None, 0
        while True:
            q = {'list-type': '2', 'max-keys': '1000', 'prefix': prefix}
            if token:
                q['continuation-token'] = token
            st, _, data = self.request('GET', '/' + bucket, query=q)
            if st != 200:
                raise RuntimeError('LIST: HTTP %d %s' % (st, data[:200]))
            pages += 1
            root = ET.fromstring(data)
            ns = root.tag.split('}')[0] + '}' if root.tag.startswith('{') else ''
            for c in root.findall(ns + 'Contents'):
                out.append((c.find(ns + 'Key').text, int(c.find(ns + 'Size').text)))
            trunc = root.find(ns + 'IsTruncated')
            token_el = root.find(ns + 'NextContinuationToken')
            if trunc is None or trunc.text != 'true' or token_el is None:
                return out, pages
            token = token_el.text

    def bulk_put(self, bucket, items, workers=16):
        with concurrent.futures.ThreadPoolExecutor(workers) as ex:
            list(ex.map(lambda kv: self.put(bucket, kv[0], kv[1]), items))


# ==================================================================== system
def drop_caches():
    subprocess.run(['sync'])
    try:
        with open('/proc/sys/vm/drop_caches', 'w') as f:
            f.write('3\n')
        return True
    except OSError:
        return False


def vm_status(pid):
    """{'VmHWM': kB, 'VmRSS': kB} of a process, or {}."""
    out = {}
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                k, _, v = line.partition(':')
                if k in ('VmHWM', 'VmRSS'):
                    out[k] = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return out


def timed(cmd, cwd=None, ok_codes=(0,)):
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True)
    dt = time.monotonic() - t0
    if p.returncode not in ok_codes:
        raise WorkloadError('%s: exit %d: %s' % (' '.join(cmd[:2]), p.returncode,
                                                 p.stderr.strip().splitlines()[-1:] or ''))
    return dt


class WorkloadError(Exception):
    pass


class NotAvailable(Exception):
    """The filesystem cannot do this (e.g. EROFS while bucketfs is read-only)."""


def errno_note(stderr):
    s = str(stderr)
    if 'Read-only file system' in s:
        return 'n/a (EROFS)'
    if 'Operation not supported' in s or 'Function not implemented' in s:
        return 'n/a (ENOTSUP)'
    return None


# ==================================================================== mounts
class FS:
    """A FUSE filesystem over the bucket, one daemon in the foreground."""

    name = None

    def __init__(self, bench):
        self.b = bench
        self.srv = bench.srv
        self.proc = None
        self.mp = os.path.join(bench.work, 'mnt-' + self.name)
        self.cache_dir = None
        self.ncache = 0
        self.nlog = 0
        self.logs = []
        self.hwm_kb = 0
        os.makedirs(self.mp, exist_ok=True)

    def new_cache(self):
        self.ncache += 1
        self.cache_dir = os.path.join(self.b.work, 'cache-%s-%d' % (self.name, self.ncache))
        os.makedirs(self.cache_dir, exist_ok=True)
        return self.cache_dir

    def argv(self, extra):
        raise NotImplementedError

    def env(self):
        return self.srv.client_env()

    def settings(self):
        raise NotImplementedError

    def mount(self, fresh=True, extra=None, timeout=60):
        if fresh or self.cache_dir is None:
            if self.cache_dir:
                shutil.rmtree(self.cache_dir, ignore_errors=True)
            self.new_cache()
        self.nlog += 1
        logf = os.path.join(self.b.work, '%s-%d.log' % (self.name, self.nlog))
        self.logs.append(logf)
        with open(logf, 'w') as lf:
            self.proc = subprocess.Popen(self.argv(extra or {}), env=self.env(),
                                         stdin=subprocess.DEVNULL, stdout=lf, stderr=lf,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mp):
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.proc = None
                tail = open(logf, errors='replace').read().strip().splitlines()[-3:]
                raise WorkloadError('%s exited %d before mounting: %s' % (
                    self.name, rc, ' | '.join(tail)))
            if time.monotonic() > deadline:
                self.kill()
                raise WorkloadError('%s did not mount within %ds' % (self.name, timeout))
            time.sleep(0.05)
        return self

    def sample_rss(self):
        if self.proc:
            self.hwm_kb = max(self.hwm_kb, vm_status(self.proc.pid).get('VmHWM', 0))
        return self.hwm_kb

    def unmount(self, timeout=60):
        if self.proc is None:
            return
        self.sample_rss()
        for attempt in range(20):
            p = subprocess.run(['fusermount3', '-u', self.mp], capture_output=True, text=True)
            if p.returncode == 0 or not os.path.ismount(self.mp):
                break
            time.sleep(0.5)
        else:
            subprocess.run(['fusermount3', '-u', '-z', self.mp], capture_output=True)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def kill(self):
        if os.path.ismount(self.mp):
            subprocess.run(['fusermount3', '-u', '-z', self.mp], capture_output=True)
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                    self.proc.wait(10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    self.proc.wait(10)
            self.proc = None

    def stats(self):
        return None

    def remount(self, extra=None):
        self.unmount()
        return self.mount(fresh=False, extra=extra)


class BucketFS(FS):
    name = 'bucketfs'

    def binary(self):
        return os.path.join(BUILD, 'fs', 'bucketfs')

    def opts(self, extra):
        o = {'url': self.srv.endpoint, 'use_path_request_style': None,
             'cache_dir': self.cache_dir, 'cache_size': '%dG' % max(2, 2 * self.b.sz.big // GiB + 1),
             'dbglevel': 'warn'}
        o.update(extra)
        return ','.join(k if v is None else '%s=%s' % (k, v) for k, v in o.items())

    def argv(self, extra):
        return [self.binary(), self.b.bucket, self.mp, '-f', '-o', self.opts(extra)]

    def settings(self):
        return ('`bucketfs BUCKET MP -f -o url=URL,use_path_request_style,cache_dir=DIR,'
                'cache_size=%s` (credentials from AWS_*; defaults otherwise: list_ttl=60, '
                'block_size=1M, prefetch=64, prefetch_parallel=4, multipart_size=64, '
                'parallel_count=8)' % self.opts({}).split('cache_size=')[1].split(',')[0])

    def stats(self):
        if self.proc is None:
            return None
        p = subprocess.run([self.binary(), 'stats', self.mp], capture_output=True, text=True)
        return p.stdout.strip() if p.returncode == 0 else 'stats failed: ' + p.stderr.strip()


class S3FS(FS):
    name = 's3fs'

    def __init__(self, bench):
        super().__init__(bench)
        self.passwd = os.path.join(bench.work, 'passwd-s3fs')
        with open(self.passwd, 'w') as f:
            f.write('%s:%s\n' % (self.srv.access_key, self.srv.secret_key))
        os.chmod(self.passwd, 0o600)

    PERF = ('parallel_count=8,multipart_size=64,multireq_max=32,max_stat_cache_size=300000,'
            'stat_cache_expire=3600,enable_noobj_cache,complement_stat')

    def argv(self, extra):
        o = 'url=%s,use_path_request_style,passwd_file=%s,use_cache=%s,%s,dbglevel=warn' % (
            self.srv.endpoint, self.passwd, self.cache_dir, self.PERF)
        return ['s3fs', self.b.bucket, self.mp, '-f', '-o', o]

    def env(self):
        e = self.srv.client_env()
        for k in list(e):
            if k.startswith('AWS_'):
                del e[k]
        return e

    def settings(self):
        return ('`s3fs BUCKET MP -f -o url=URL,use_path_request_style,passwd_file=F,'
                'use_cache=DIR,%s`' % self.PERF)


class Rclone(FS):
    name = 'rclone'

    FLAGS = ['--vfs-cache-mode', 'full', '--vfs-cache-max-size', '8G',
             '--vfs-write-back', '0s', '--vfs-read-chunk-size', '16M',
             '--vfs-read-chunk-size-limit', 'off', '--buffer-size', '16M',
             '--transfers', '8', '--checkers', '16', '--dir-cache-time', '1h',
             '--use-server-modtime', '--s3-upload-concurrency', '8', '--s3-chunk-size', '64M',
             '--s3-disable-checksum', '--s3-no-check-bucket', '--no-checksum']

    def __init__(self, bench):
        super().__init__(bench)
        self.conf = os.path.join(bench.work, 'rclone.conf')
        with open(self.conf, 'w') as f:
            f.write('[bench]\ntype = s3\nprovider = Minio\nenv_auth = false\n'
                    'access_key_id = %s\nsecret_access_key = %s\nregion = %s\n'
                    'endpoint = %s\nforce_path_style = true\n' % (
                        self.srv.access_key, self.srv.secret_key, self.srv.region,
                        self.srv.endpoint))
        os.chmod(self.conf, 0o600)

    def argv(self, extra):
        return (['rclone', 'mount', 'bench:' + self.b.bucket, self.mp, '--config', self.conf,
                 '--cache-dir', self.cache_dir, '--log-level', 'NOTICE'] + self.FLAGS)

    def env(self):
        e = dict(os.environ)
        for k in list(e):
            if k.startswith('AWS_') or k.startswith('RCLONE_'):
                del e[k]
        return e

    def settings(self):
        return ('`rclone mount bench:BUCKET MP --cache-dir DIR %s` (config: type s3, provider '
                'Minio, force_path_style = true)' % ' '.join(self.FLAGS))


PEERS = {'bucketfs': BucketFS, 's3fs': S3FS, 'rclone': Rclone}
# workloads 1+7, 2+3, 4+5, 6; index: the 100,000-entry RSS step (bucketfs only)
PARTS = ('read', 'write', 'tree', 'rsync', 'index')


# ==================================================================== bench
class Bench:
    def __init__(self, args):
        self.args = args
        self.sz = Sizes(args.quick, args.repeats)
        if args.workdir:
            os.makedirs(args.workdir, exist_ok=True)
        self.work = tempfile.mkdtemp(prefix='bucketfs-bench-', dir=args.workdir)
        self.srv = None
        self.fs = {}
        self.results = {}   # (workload, column) -> [seconds] or str
        self.requests = {}  # (workload, fs) -> [n]
        self.req_by = {}    # (workload, fs) -> {kind: n} (last run)
        self.rss = {}       # (phase, fs) -> kB
        self.stats = []     # (title, text)
        self.notes = []
        self.failures = []
        self.dropped = True
        self.t_start = time.monotonic()
        self.phases = []    # (name, seconds): where the bench's own time goes
        self.part_time = {}  # (fs, part) -> seconds of its last run
        self.failed_parts = set()
        self.skipped = []   # runs left out to stay within --budget

    @contextlib.contextmanager
    def phase(self, name):
        """Logs and records the wall time of one phase of the bench."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            dt = time.monotonic() - t0
            self.phases.append((name, dt))
            log('%s: %.1fs' % (name, dt))

    # ------------------------------------------------------------ recording
    def rec(self, wl, col, dt):
        v = self.results.setdefault((wl, col), [])
        if isinstance(v, list):
            v.append(dt)

    def fail(self, wl, col, msg):
        self.results[(wl, col)] = msg

    def rec_req(self, wl, fsname, mark):
        n, by = self.counter.since(mark)
        self.requests.setdefault((wl, fsname), []).append(n)
        self.req_by[(wl, fsname)] = by

    def drop(self):
        if not drop_caches():
            self.dropped = False

    # ------------------------------------------------------------ setup
    def start_server(self):
        cls = LoggedSwift if self.args.server == 'swift' else LoggedS3rver
        self.srv = cls(base_dir=os.path.join(self.work, 'server'),
                       lifetime=self.args.lifetime)
        log('starting %s' % self.srv.kind)
        self.srv.start()
        self.counter = RequestCounter(self.srv)
        self.s3 = S3Direct(self.srv)
        self.bucket = self.srv.create_bucket('bench')

    def fill(self):
        sz = self.sz
        rnd = random.Random(6)
        self.local = os.path.join(self.work, 'local')
        os.makedirs(self.local)
        # the big object
        self.big_local = os.path.join(self.local, 'big')
        log('writing a %s file' % human(sz.big))
        with open(self.big_local, 'wb') as f:
            chunk = os.urandom(16 * MiB)
            for i in range(sz.big // (16 * MiB)):
                f.write(hashlib.sha256(b'%d' % i).digest()[:16] + chunk[16:])
        t0 = time.monotonic()
        self.srv.aws('s3', 'cp', '--only-show-errors', self.big_local,
                     's3://%s/big' % self.bucket, timeout=900)
        log('uploaded big in %.1fs' % (time.monotonic() - t0))
        # the tree, 1-8 KiB files
        self.tree_local = os.path.join(self.local, 'tree')
        items = []
        for d in range(sz.tree_dirs):
            dd = os.path.join(self.tree_local, 'd%03d' % d)
            os.makedirs(dd)
            for i in range(sz.tree_files):
                body = rnd.randbytes(rnd.randint(1024, sz.tree_max))
                with open(os.path.join(dd, 'f%03d' % i), 'wb') as f:
                    f.write(body)
                items.append(('tree/d%03d/f%03d' % (d, i), body))
        self.tree_keys = [k for k, _ in items]
        if self.srv.kind == 's3rver':
            # s3rver's delimited listing of the root skips keys two levels
            # down (tree/dNNN/fNNN) unless tree/ holds an object of its own
            items.append(('tree/', b''))
            self.notes.append('s3rver: the tree has a directory marker object "tree/" '
                              '(without it s3rver\'s delimited listing of the root omits '
                              'tree/, an s3rver bug)')
        t0 = time.monotonic()
        self.s3.bulk_put(self.bucket, items, workers=32)
        log('uploaded %d tree objects in %.1fs' % (len(items), time.monotonic() - t0))
        # the small files to copy in, 1-64 KiB
        self.small_local = os.path.join(self.local, 'small')
        os.makedirs(self.small_local)
        for i in range(sz.small_files):
            with open(os.path.join(self.small_local, 's%04d' % i), 'wb') as f:
                f.write(rnd.randbytes(rnd.randint(1024, 64 * 1024)))
        # a reference file for find -newer: half the tree is newer than it
        # on a local copy; on the mounts it is just a file of the tree
        self.newer_ref = 'tree/d000/f000'

    # ------------------------------------------------------------ raw limits
    def presign(self, key, method='get'):
        if method == 'get':
            p = self.srv.aws('s3', 'presign', 's3://%s/%s' % (self.bucket, key), '--expires-in',
                             '3600')
            return p.stdout.strip()
        # a presigned PUT: aws s3 presign only does GET; sign it ourselves
        return None

    def run_raw(self):
        sz = self.sz
        wl1 = '1a. seq read %s, cold' % human(sz.big)
        url = self.presign('big')
        for r in range(sz.repeats):
            self.drop()
            self.rec(wl1, 'raw', timed(['curl', '-sSf', '-o', '/dev/null', url]))
            self.drop()
            self.rec(wl1, 'local', timed(['cat', self.big_local]))
            self.drop()
            self.rec('1b. seq read %s, warm' % human(sz.big), 'local',
                     timed(['cat', self.big_local]))
        log('raw: listing; local: ls, find, du')
        for r in range(sz.repeats):
            # one listing is the raw limit of both the cold and the
            # after-remount walk
            t0 = time.monotonic()
            keys, pages = self.s3.list_all(self.bucket, 'tree/')
            dt = time.monotonic() - t0
            for wl in ('4a. ls -lR tree, cold', '4c. ls -lR tree, after remount'):
                self.rec(wl, 'raw', dt)
            if len([k for k, _ in keys if not k.endswith('/')]) != sz.tree_objects:
                raise RuntimeError('listing found %d objects' % len(keys))
            self.raw_list_pages = pages
        # the floor of a cold walk that, like bucketfs's, fetches every
        # object once: the paged listing, then one GET per object, 16 at a time
        t0 = time.monotonic()
        keys, _ = self.s3.list_all(self.bucket, 'tree/')
        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            sts = list(ex.map(lambda k: self.s3.request('GET', '/%s/%s' % (
                self.bucket, k))[0], [k for k, _ in keys if not k.endswith('/')]))
        if any(st != 200 for st in sts):
            raise RuntimeError('GET of the tree: HTTP %s' % sorted(set(sts)))
        self.notes.append('raw: the tree listed, then every object fetched with one GET, 16 '
                          'in parallel (what a cold walk that fetches every object costs the '
                          'server at least): %.2fs for %d objects' % (
                              time.monotonic() - t0, len(sts)))
        for wl in ('4a. ls -lR tree, cold', '4b. ls -lR tree, warm',
                   '4c. ls -lR tree, after remount'):
            for r in range(sz.repeats):
                self.drop()
                self.rec(wl, 'local', timed(['ls', '-lR', self.tree_local]))
        for r in range(sz.repeats):
            self.drop()
            self.rec('5a. find -newer', 'local',
                     timed(['find', self.tree_local, '-newer',
                            os.path.join(self.local, self.newer_ref)]))
            self.drop()
            self.rec('5b. du -s', 'local', timed(['du', '-s', self.tree_local]))
        log('raw and local: random reads')
        for r in range(sz.repeats):
            self.drop()
            self.rec('7. random 4K reads, cold', 'local', self.random_reads(self.big_local))
            self.drop()
            self.rec('7. random 4K reads, cold', 'raw', self.raw_random_reads())
        log('local: writes')
        dst = os.path.join(self.work, 'localw')
        for r in range(sz.repeats):
            shutil.rmtree(dst, ignore_errors=True)
            os.makedirs(dst)
            self.rec('2. seq write %s' % human(sz.big), 'local',
                     timed(['sh', '-c', 'cp "$1" "$2" && sync', 'cp', self.big_local,
                            os.path.join(dst, 'big')]))
            self.rec('3. cp -r %d small files' % sz.small_files, 'local',
                     timed(['sh', '-c', 'cp -r "$1" "$2" && sync', 'cp', self.small_local,
                            os.path.join(dst, 'small')]))
            shutil.rmtree(dst, ignore_errors=True)
        # raw single PUT of the big file (curl, presigned by us): once, a limit
        log('raw: PUT')
        try:
            for r in range(1):
                self.rec('2. seq write %s' % human(sz.big), 'raw', self.raw_put('raw-put-%d' % r))
        except Exception as e:  # noqa: BLE001 - a raw limit is optional
            self.notes.append('raw PUT limit not measured: %s' % e)
        # rsync between local dirs
        log('local: rsync')
        src = os.path.join(self.work, 'tree-copy')
        subprocess.run(['cp', '-a', self.tree_local, src], check=True)
        for r in range(sz.repeats):
            dest = os.path.join(self.work, 'rsync-local')
            shutil.rmtree(dest, ignore_errors=True)
            self.drop()
            self.rec('6a. rsync -a, cold', 'local', timed(['rsync', '-a', src + '/', dest + '/']))
            self.drop()
            self.rec('6b. rsync -a, no change', 'local',
                     timed(['rsync', '-a', src + '/', dest + '/']))
            self.drop()
            self.rec('6c. rsync -a, no change, after remount', 'local',
                     timed(['rsync', '-a', src + '/', dest + '/']))
            rnd = random.Random(100 + r)
            for k in rnd.sample(self.tree_keys, max(1, len(self.tree_keys) // 100)):
                p = os.path.join(src, k[len('tree/'):])
                size = os.path.getsize(p)
                with open(p, 'wb') as f:
                    f.write(rnd.randbytes(size))
            self.drop()
            self.rec('6d. rsync -a, 1% changed, after remount', 'local',
                     timed(['rsync', '-a', src + '/', dest + '/']))
            shutil.rmtree(dest, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)

    def raw_put(self, key):
        """One presigned PUT of the big file with curl."""
        import datetime
        import hmac
        now = datetime.datetime.now(datetime.timezone.utc)
        amz, day = now.strftime('%Y%m%dT%H%M%SZ'), now.strftime('%Y%m%d')
        scope = '%s/%s/s3/aws4_request' % (day, self.srv.region)
        host = '%s:%d' % (self.srv.host, self.srv.port)
        path = '/%s/%s' % (self.bucket, key)
        q = {'X-Amz-Algorithm': 'AWS4-HMAC-SHA256',
             'X-Amz-Credential': '%s/%s' % (self.srv.access_key, scope),
             'X-Amz-Date': amz, 'X-Amz-Expires': '3600', 'X-Amz-SignedHeaders': 'host'}
        cq = '&'.join('%s=%s' % (urllib.parse.quote(k, safe='-_.~'),
                                 urllib.parse.quote(v, safe='-_.~')) for k, v in sorted(q.items()))
        creq = '\n'.join(['PUT', path, cq, 'host:%s\n' % host, 'host', 'UNSIGNED-PAYLOAD'])
        sts = '\n'.join(['AWS4-HMAC-SHA256', amz, scope,
                         hashlib.sha256(creq.encode()).hexdigest()])
        k = ('AWS4' + self.srv.secret_key).encode()
        for m in (day, self.srv.region, 's3', 'aws4_request'):
            k = hmac.new(k, m.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        url = '%s%s?%s&X-Amz-Signature=%s' % (self.srv.endpoint, path, cq, sig)
        return timed(['curl', '-sSf', '-o', '/dev/null', '-H', 'Expect:', '-T', self.big_local,
                      url])

    def offsets(self):
        rnd = random.Random(7)
        return [rnd.randrange(0, self.sz.big // 4096) * 4096 for _ in range(self.sz.random_reads)]

    def random_reads(self, path):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            t0 = time.monotonic()
            for off in self.offsets():
                if len(os.pread(fd, 4096, off)) != 4096:
                    raise WorkloadError('short read at %d' % off)
            return time.monotonic() - t0
        finally:
            os.close(fd)

    def raw_random_reads(self):
        t0 = time.monotonic()
        for off in self.offsets():
            st, _, data = self.s3.request('GET', '/%s/big' % self.bucket,
                                          headers={'Range': 'bytes=%d-%d' % (off, off + 4095)})
            if st != 206 or len(data) != 4096:
                raise RuntimeError('ranged GET: HTTP %d, %d bytes' % (st, len(data)))
        return time.monotonic() - t0

    # ------------------------------------------------------------ one filesystem
    def part_funcs(self):
        return {'read': self.part_read, 'write': self.part_write, 'tree': self.part_tree,
                'rsync': self.part_rsync}

    def run_part(self, name, pname, r):
        """Run r (0-based) of one part on one filesystem; a part that fails
        gets FAIL in its cells and is not run again."""
        f = self.fs.get(name)
        if f is None:
            f = self.fs[name] = PEERS[name](self)
        part = self.part_funcs()[pname]
        try:
            t0 = time.monotonic()
            with self.phase('%s: %s, run %d' % (name, pname, r + 1)):
                part(f, r)
            self.part_time[(name, pname)] = time.monotonic() - t0
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - report and go on with the next part
            full = str(e).replace('|', '/').replace(self.work, 'WORK')
            msg = 'FAIL (%d)' % (len(self.failures) + 1)
            self.failures.append('%s: %s' % (name, full))
            log('%s: FAIL: %s' % (name, full))
            self.failed_parts.add((name, pname))
            for wl in self.part_workloads(part):
                v = self.results.get((wl, name))
                if v is None:
                    self.results[(wl, name)] = msg
                elif isinstance(v, list):
                    self.notes.append('%s: %s: only %d run(s) before %s' % (
                        name, wl, len(v), msg))
        finally:
            f.kill()

    def run_all(self):
        """Runs every part on every filesystem, one run of each before the
        next run of any (so the machine's load spreads over all three), and
        the 100,000-entry step after the first round.  With --budget, a
        further run of a part is skipped when the time it took last would
        take the bench past the budget; the cells show how many runs they
        have."""
        names = [n for n in ('bucketfs', 's3fs', 'rclone') if n in self.args.only]
        parts = [p for p in self.part_funcs() if p in self.args.parts]
        budget = self.args.budget
        for r in range(self.sz.repeats):
            for name in names:
                for pname in parts:
                    if (name, pname) in self.failed_parts:
                        continue
                    left = self.t_start + budget - time.monotonic() if budget else None
                    est = self.part_time.get((name, pname), 0)
                    if r > 0 and left is not None and est > left:
                        self.skipped.append('%s %s run %d (last run took %.0fs, %.0fs of the '
                                            'budget left)' % (name, pname, r + 1, est,
                                                              max(0, left)))
                        log('budget: skipping %s' % self.skipped[-1])
                        continue
                    self.run_part(name, pname, r)
            if r == 0 and 'index' in self.args.parts and self.sz.index_dirs:
                with self.phase('100k-entry index'):
                    self.run_index()

    def part_workloads(self, part):
        sz = self.sz
        return {
            self.part_read: ['1a. seq read %s, cold' % human(sz.big),
                             '1b. seq read %s, warm' % human(sz.big),
                             '7. random 4K reads, cold'],
            self.part_write: ['2. seq write %s' % human(sz.big),
                              '3. cp -r %d small files' % sz.small_files],
            self.part_tree: ['4a. ls -lR tree, cold', '4b. ls -lR tree, warm', '5a. find -newer',
                             '5b. du -s', '4c. ls -lR tree, after remount'],
            self.part_rsync: ['6a. rsync -a, cold', '6b. rsync -a, no change',
                              '6c. rsync -a, no change, after remount',
                              '6d. rsync -a, 1% changed, after remount'],
        }[part]

    def step(self, f, wl, cmd, drop=True):
        if drop:
            self.drop()
        m = self.counter.mark()
        dt = timed(cmd)
        self.rec(wl, f.name, dt)
        self.rec_req(wl, f.name, m)
        return dt

    def part_read(self, f, r):
        wl_cold, wl_warm = self.part_workloads(self.part_read)[:2]
        big = os.path.join(f.mp, 'big')
        log('%s: sequential read, run %d' % (f.name, r + 1))
        f.mount(fresh=True)
        self.step(f, wl_cold, ['cat', big])
        self.step(f, wl_warm, ['cat', big])
        self.add_stats(f, 'after workload 1 (run %d)' % (r + 1))
        f.unmount()
        log('%s: random reads, run %d' % (f.name, r + 1))
        f.mount(fresh=True)
        self.drop()
        m = self.counter.mark()
        self.rec('7. random 4K reads, cold', f.name, self.random_reads(big))
        self.rec_req('7. random 4K reads, cold', f.name, m)
        f.unmount()

    def wait_uploaded(self, expect, timeout):
        """Polls the bucket until every key has its size."""
        deadline = time.monotonic() + timeout
        pending = dict(expect)
        while pending:
            for k, size in list(pending.items()):
                st, h = self.s3.head(self.bucket, k)
                if st == 200 and int(h.get('content-length', -1)) == size:
                    del pending[k]
            if pending:
                if time.monotonic() > deadline:
                    raise WorkloadError('%d objects not uploaded after %ds' % (
                        len(pending), timeout))
                time.sleep(0.05)

    def part_write(self, f, r):
        sz = self.sz
        wl_big, wl_small = self.part_workloads(self.part_write)
        f.mount(fresh=True)
        small = sorted(os.listdir(self.small_local))
        written = []
        for wl, cmd, expect in (
                (wl_big, ['cp', self.big_local, os.path.join(f.mp, 'w-%s-%d' % (f.name, r))],
                 {'w-%s-%d' % (f.name, r): sz.big}),
                (wl_small, ['cp', '-r', self.small_local,
                            os.path.join(f.mp, 'c-%s-%d' % (f.name, r))],
                 {'c-%s-%d/%s' % (f.name, r, n): os.path.getsize(
                     os.path.join(self.small_local, n)) for n in small})):
            if isinstance(self.results.get((wl, f.name)), str):
                continue  # failed or not available in an earlier run
            log('%s: %s, run %d' % (f.name, wl, r + 1))
            m = self.counter.mark()
            t0 = time.monotonic()
            p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
            if p.returncode != 0:
                note = errno_note(p.stderr)
                if not note:
                    self.failures.append('%s: %s' % (f.name, p.stderr.strip()[:300]))
                    note = 'FAIL (%d)' % len(self.failures)
                self.fail(wl, f.name, note)
                continue
            # a background upload that failed (rclone logs it, cp saw
            # nothing) must not stall the bench: a bounded wait, then FAIL
            try:
                self.wait_uploaded(expect, timeout=120 + 5 * (time.monotonic() - t0))
            except WorkloadError as e:
                self.failures.append('%s: %s: %s (see its log)' % (f.name, wl, e))
                self.fail(wl, f.name, 'FAIL (%d)' % len(self.failures))
                continue
            self.rec(wl, f.name, time.monotonic() - t0)
            self.rec_req(wl, f.name, m)
            written += list(expect)
        self.add_stats(f, 'after workloads 2-3 (run %d)' % (r + 1))
        f.unmount()
        # what was written goes again (not timed): the bucket stays the same
        # size from one run to the next
        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            list(ex.map(lambda k: self.s3.request('DELETE', '/%s/%s' % (self.bucket, k)),
                        written + ['c-%s-%d/' % (f.name, r)]))

    def part_tree(self, f, r):
        wl_cold, wl_warm, wl_find, wl_du, wl_remount = self.part_workloads(self.part_tree)
        tree = os.path.join(f.mp, 'tree')
        log('%s: tree listing, run %d' % (f.name, r + 1))
        f.hwm_kb = 0
        f.mount(fresh=True)
        self.step(f, wl_cold, ['ls', '-lR', tree])
        listed = time.monotonic()
        self.step(f, wl_warm, ['ls', '-lR', tree])
        self.step(f, wl_find, ['find', tree, '-newer', os.path.join(f.mp, self.newer_ref)])
        self.step(f, wl_du, ['du', '-s', tree])
        f.unmount()
        self.wait_expired(f, listed)
        f.mount(fresh=False, extra=self.expire(f))
        self.step(f, wl_remount, ['ls', '-lR', tree])
        self.add_stats(f, 'after workloads 4-5 (run %d)' % (r + 1))
        f.unmount()
        self.rss[('4', f.name)] = max(self.rss.get(('4', f.name), 0), f.hwm_kb)

    def part_rsync(self, f, r):
        wl_a, wl_b, wl_c, wl_d = self.part_workloads(self.part_rsync)
        tree = os.path.join(f.mp, 'tree') + '/'
        # bucketfs trusts a listing for list_ttl, also across a remount: the
        # nightly run comes long after it expired. Remount with a short TTL
        # and let the listings age past it (not timed).
        expire = self.expire(f)
        log('%s: rsync, run %d' % (f.name, r + 1))
        dest = os.path.join(self.work, 'rsync-' + f.name)
        shutil.rmtree(dest, ignore_errors=True)
        f.hwm_kb = 0
        f.mount(fresh=True)
        self.step(f, wl_a, ['rsync', '-a', tree, dest + '/'])
        listed = time.monotonic()
        self.step(f, wl_b, ['rsync', '-a', tree, dest + '/'])
        self.add_stats(f, 'after workload 6b (run %d)' % (r + 1))
        f.unmount()
        self.wait_expired(f, listed)
        f.mount(fresh=False, extra=expire)
        self.step(f, wl_c, ['rsync', '-a', tree, dest + '/'])
        listed = time.monotonic()
        self.add_stats(f, 'after workload 6c (run %d)' % (r + 1))
        f.unmount()
        # change 1% of the objects: same sizes, new contents
        rnd = random.Random(1000 + r)
        changed = {}
        for k in rnd.sample(self.tree_keys, max(1, len(self.tree_keys) // 100)):
            size = os.path.getsize(os.path.join(dest, k[len('tree/'):]))
            changed[k] = rnd.randbytes(size)
        time.sleep(1.1)  # LastModified has one-second resolution in places
        self.s3.bulk_put(self.bucket, list(changed.items()), workers=8)
        self.wait_expired(f, listed)
        f.mount(fresh=False, extra=expire)
        self.step(f, wl_d, ['rsync', '-a', tree, dest + '/'])
        self.add_stats(f, 'after workload 6d (run %d)' % (r + 1))
        f.unmount()
        wrong = sum(1 for k, body in changed.items()
                    if open(os.path.join(dest, k[len('tree/'):]), 'rb').read() != body)
        if wrong:
            self.notes.append('%s: rsync after 1%% changed copied %d of %d changed files '
                              'stale (run %d)' % (f.name, wrong, len(changed), r + 1))
            self.results[(wl_d, f.name + '#stale')] = wrong
        self.rss[('6', f.name)] = max(self.rss.get(('6', f.name), 0), f.hwm_kb)
        shutil.rmtree(dest, ignore_errors=True)
        # keep the local mirror in step with the bucket
        for k, body in changed.items():
            with open(os.path.join(self.tree_local, k[len('tree/'):]), 'wb') as fh:
                fh.write(body)

    @staticmethod
    def wait_expired(f, listed):
        """bucketfs: waits until listings made before `listed` (monotonic)
        are older than the list_ttl it is remounted with (not timed)."""
        if f.name == 'bucketfs':
            time.sleep(max(0.0, listed + EXPIRE_TTL + 1 - time.monotonic()))

    @staticmethod
    def expire(f):
        return {'list_ttl': EXPIRE_TTL} if f.name == 'bucketfs' else {}

    def add_stats(self, f, when):
        s = f.stats()
        if s:
            self.stats.append(('%s %s' % (f.name, when), s))

    # ------------------------------------------------------------ 100k entries
    def run_index(self):
        sz = self.sz
        if not sz.index_dirs or 'bucketfs' not in self.args.only:
            return
        try:
            bucket = self.srv.create_bucket('bench-100k')
            n = sz.index_dirs * sz.index_files
            log('creating %d objects' % n)
            t0 = time.monotonic()
            how = self.fill_many(bucket, sz.index_dirs, sz.index_files)
            log('created %d objects in %.0fs (%s)' % (n, time.monotonic() - t0, how))
            f = BucketFS(self)
            f.mp = os.path.join(self.work, 'mnt-100k')
            os.makedirs(f.mp, exist_ok=True)
            saved, self.bucket = self.bucket, bucket
            try:
                f.mount(fresh=True)
                self.drop()
                m = self.counter.mark()
                t0 = time.monotonic()
                timed(['ls', '-lR', f.mp])
                dt = time.monotonic() - t0
                nreq, _ = self.counter.since(m)
                st = vm_status(f.proc.pid)
                self.rss[('100k', 'bucketfs')] = st.get('VmHWM', 0)
                self.notes.append('100k entries: ls -lR of a %d-object bucket (%d dirs) took '
                                  '%.1fs and %d requests; bucketfs VmHWM %d KiB, VmRSS %d KiB '
                                  'after it' % (n, sz.index_dirs, dt, nreq, st.get('VmHWM', 0),
                                                st.get('VmRSS', 0)))
                self.add_stats(f, 'after ls -lR of 100k objects')
                f.unmount()
            finally:
                self.bucket = saved
                f.kill()
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001
            self.notes.append('100k entries: FAIL: %s' % e)

    def fill_many(self, bucket, ndirs, nfiles):
        """Fills `bucket` with ndirs x nfiles 16-byte objects dNNNN/fNNN.
        s3rver keeps each object as files of its own in its data directory
        (KEY._S3rver_object, .md5, _metadata.json, what its PUT writes):
        those are written directly, 20x faster than 100,000 PUTs through its
        single-threaded HTTP server, then checked through S3.  Other servers
        get parallel PUTs."""
        body = b'x' * 16
        keys = ['d%04d/f%03d' % (d, i) for d in range(ndirs) for i in range(nfiles)]
        if self.srv.kind != 's3rver':
            with concurrent.futures.ThreadPoolExecutor(32) as ex:
                list(ex.map(lambda k: self.s3.put(bucket, k, body), keys, chunksize=64))
            return 'parallel PUTs'
        # the layout of one PUT, taken from the server itself
        probe = 'd%04d/f%03d' % (ndirs, 0)
        self.s3.put(bucket, probe, body)
        root = os.path.join(self.srv.data_dir, bucket)
        files = {}
        for suffix in ('object', 'object.md5', 'metadata.json'):
            pth = os.path.join(root, probe.split('/')[0], 'f000._S3rver_' + suffix)
            with open(pth, 'rb') as fh:
                files[suffix] = fh.read()
        st, _, _ = self.s3.request('DELETE', '/%s/%s' % (bucket, probe))
        if st not in (200, 204) or files['object'] != body:
            raise RuntimeError('s3rver store layout not as expected (HTTP %d)' % st)
        try:
            os.rmdir(os.path.join(root, probe.split('/')[0]))
        except OSError:
            pass
        for d in range(ndirs):
            dd = os.path.join(root, 'd%04d' % d)
            os.makedirs(dd, exist_ok=True)
            for i in range(nfiles):
                for suffix, data in files.items():
                    with open(os.path.join(dd, 'f%03d._S3rver_%s' % (i, suffix)), 'wb') as fh:
                        fh.write(data)
        # the server sees them: one directory listed, a sample read back
        keys_d0, _ = self.s3.list_all(bucket, 'd0000/')
        if len(keys_d0) != nfiles:
            raise RuntimeError('s3rver lists %d objects under d0000/, wrote %d' % (
                len(keys_d0), nfiles))
        for k in random.Random(8).sample(keys, 20):
            st, _, data = self.s3.request('GET', '/%s/%s' % (bucket, k))
            if st != 200 or data != body:
                raise RuntimeError('GET %s after writing the store: HTTP %d' % (k, st))
        return "written into s3rver's data directory"

    # ------------------------------------------------------------ report
    def workloads(self):
        order = []
        for (wl, col) in self.results:
            if wl not in order and '#' not in col:
                order.append(wl)
        return sorted(order, key=lambda w: (int(w.split('.')[0][0]), w))

    def cell(self, wl, col):
        v = self.results.get((wl, col))
        if v is None:
            return None, '—'
        if isinstance(v, str):
            return None, v
        med = statistics.median(v)
        txt = '%.3f' % med if med < 10 else '%.1f' % med
        if self.sz.repeats > 1:
            txt += ' (%d)' % len(v)
        if (wl, col + '#stale') in self.results:
            txt += ' STALE'
        return med, txt

    def report(self):
        names = [n for n in ('bucketfs', 's3fs', 'rclone') if n in self.args.only]
        peers = [n for n in names if n != 'bucketfs']
        lines = []
        w = lines.append
        w('# bucketfs benchmark%s' % (' (--quick)' if self.sz.quick else ''))
        w('')
        w('%s; %s, %d CPUs; server %s; big object %s; tree %d objects (%d dirs x %d, 1-%d KiB); '
          '%d small files (1-64 KiB); %d repeats, median; page cache %s.' % (
              time.strftime('%Y-%m-%d %H:%M'), platform.node(), os.cpu_count(), self.srv.kind,
              human(self.sz.big), self.sz.tree_objects, self.sz.tree_dirs, self.sz.tree_files,
              self.sz.tree_max // 1024, self.sz.small_files, self.sz.repeats,
              'dropped before every timed run' if self.dropped else
              'NOT dropped (not root)'))
        w('')
        w('Seconds (median; "(n)" = runs). raw: one curl GET / paged ListObjectsV2 / '
          'ranged GETs / one curl PUT. local: the same on a local directory. Requests: '
          'counted in the server\'s request log, median per run, the mount itself not '
          'counted.')
        w('')
        hdr = ['workload', 'local', 'raw'] + names
        hdr += ['bucketfs ÷ %s' % p for p in peers if 'bucketfs' in names]
        if 'bucketfs' in names:
            hdr += ['bucketfs ÷ raw']
        hdr += ['requests %s' % n for n in names]
        w('| ' + ' | '.join(hdr) + ' |')
        w('|' + '---|' * len(hdr))
        for wl in self.workloads():
            row = [wl]
            vals = {}
            for col in ['local', 'raw'] + names:
                vals[col], txt = self.cell(wl, col)
                row.append(txt)
            if 'bucketfs' in names:
                for p in peers + ['raw']:
                    if vals['bucketfs'] is not None and vals.get(p):
                        row.append('%.2f' % (vals['bucketfs'] / vals[p]))
                    else:
                        row.append('—')
            for n in names:
                rq = self.requests.get((wl, n))
                row.append(str(int(statistics.median(rq))) if rq else '—')
            w('| ' + ' | '.join(row) + ' |')
        w('')
        w('Peak RSS of each daemon (VmHWM, MiB):')
        w('')
        w('| daemon | during 4-5 (ls -lR, find, du) | during 6 (rsync) | 100k-object index |')
        w('|---|---|---|---|')
        for n in names:
            cells = []
            for ph in ('4', '6', '100k'):
                v = self.rss.get((ph, n))
                cells.append('%.1f' % (v / 1024) if v else '—')
            w('| %s | %s |' % (n, ' | '.join(cells)))
        w('')
        w('Requests by kind, last run of each workload:')
        w('')
        for wl in self.workloads():
            parts = []
            for n in names:
                by = self.req_by.get((wl, n))
                if by:
                    parts.append('%s %s' % (n, ', '.join('%s %d' % kv for kv in sorted(by.items()))))
            if parts:
                w('- %s: %s' % (wl, '; '.join(parts)))
        if getattr(self, 'raw_list_pages', None):
            w('- raw listing: %d ListObjectsV2 pages' % self.raw_list_pages)
        w('')
        w('Settings:')
        w('')
        for n in names:
            f = self.fs.get(n)
            if f:
                w('- %s' % f.settings())
        w('- "after remount" (4c, 6c, 6d): bucketfs is remounted with list_ttl=%d once its '
          'listings are older than that, as on the next night (within list_ttl it would '
          'trust its index and make no request); s3fs and rclone keep no metadata across '
          'a remount.' % EXPIRE_TTL)
        w('- write workloads are timed from the start of cp to the moment every object is in '
          'the bucket (HEAD polling); rclone uploads in the background (--vfs-write-back 0s).')
        w('')
        if self.failures:
            w('Failures:')
            w('')
            for i, msg in enumerate(self.failures):
                w('%d. %s' % (i + 1, msg))
            w('')
        if self.skipped:
            self.notes.append('left out to stay within the %.0fs budget (--budget): %s' % (
                self.args.budget, '; '.join(self.skipped)))
        if self.notes:
            w('Notes:')
            w('')
            for n in self.notes:
                w('- ' + n)
            w('')
        w('Bench wall time by phase (s): ' + ', '.join(
            '%s %.0f' % (n, dt) for n, dt in self.phases) + '.')
        w('')
        w('Total bench time: %.0fs.' % (time.monotonic() - self.t_start))
        table = '\n'.join(lines) + '\n'
        full = table
        if self.stats:
            full += '\n## bucketfs stats\n\n'
            for title, text in self.stats:
                full += '### %s\n\n```\n%s\n```\n\n' % (title, text)
        return table, full

    # ------------------------------------------------------------ main
    def run(self):
        versions = {}
        try:
            with self.phase('server start'):
                self.start_server()
            if set(self.args.parts) - {'index'}:
                with self.phase('fill'):
                    self.fill()
                log('raw limits and local directory')
                with self.phase('raw limits and local directory'):
                    self.run_raw()
            self.run_all()
        finally:
            for f in self.fs.values():
                f.kill()
            table, full = self.report()
            print(table)
            out = self.args.out
            with open(out, 'w') as fh:
                fh.write(full)
            log('report written to %s' % out)
            if self.srv:
                self.srv.stop()
            if not self.args.keep:
                shutil.rmtree(self.work, ignore_errors=True)
            else:
                log('kept %s' % self.work)
        return versions


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--quick', action='store_true', help='small sizes, one repeat (CI)')
    ap.add_argument('--server', choices=('s3rver', 'swift'), default='s3rver')
    ap.add_argument('--out', default=os.path.join(HERE, 'last-run.md'))
    ap.add_argument('--only', default='bucketfs,s3fs,rclone',
                    help='comma-separated filesystems to run')
    ap.add_argument('--repeats', type=int, default=None)
    ap.add_argument('--budget', type=float, default=None,
                    help='seconds the whole bench may take (default: 840, --quick 170); '
                    'runs after the first are skipped when they would exceed it; 0: none')
    ap.add_argument('--parts', default=','.join(PARTS),
                    help='comma-separated parts to run (default: all of %s)' % ','.join(PARTS))
    ap.add_argument('--workdir', default=None, help='where to put the temporary files')
    ap.add_argument('--keep', action='store_true', help='keep the work directory')
    ap.add_argument('--lifetime', type=int, default=DEFAULT_LIFETIME,
                    help='the server stops by itself after this many seconds')
    args = ap.parse_args()
    args.only = [s.strip() for s in args.only.split(',') if s.strip()]
    args.parts = [s.strip() for s in args.parts.split(',') if s.strip()]
    if args.budget is None:
        args.budget = 170 if args.quick else 840
    for n in args.parts:
        if n not in PARTS:
            ap.error('unknown part %r' % n)
    for n in args.only:
        if n not in PEERS:
            ap.error('unknown filesystem %r' % n)
    if 'bucketfs' in args.only and not os.path.exists(os.path.join(BUILD, 'fs', 'bucketfs')):
        ap.error('%s/fs/bucketfs not built (set BUCKETFS_BUILD or use tests/bench/run.sh)'
                 % BUILD)
    if os.geteuid() != 0:
        log('not root: the page cache cannot be dropped; timings of cold runs are warm')

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    Bench(args).run()


if __name__ == '__main__':
    main()
