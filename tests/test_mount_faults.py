"""Faults (issue 7): the mounted binary under a faulty server, a server that
is down, a full cache disk, and 16 threads at once.

1. test_mixed_workload_under_faults: writer and reader threads through a
   FaultProxy injecting faults into 15% of the requests (BUCKETFS_FAULT_RATES
   =0.05,0.1,0.2 runs several rates), drawn from every kind: 500, 503,
   SlowDown, reset mid-body, truncated body, stalls past readwrite_timeout,
   malformed XML, endless XML, wrong ETags after uploads (one of these drawn
   for an answer it does not fit waits for the next one it fits, so few XML
   answers still get their share).  Every syscall
   returns within BOUND seconds (computed from the mount's timeouts and
   retries, see syscall_bound), with correct data or an error; nothing read
   back is wrong.  Then the faults stop, the mount is unmounted (which waits
   for the uploads) and the bucket, read straight from the server, agrees
   byte for byte with a reference directory the writers kept: the last
   content of every file whose last write was closed without error, and for
   a failed one the attempt (kept and uploaded later) or the version before;
   a remount shows the same.
2. test_server_down_and_back: the proxy drops every request for a minute
   (BUCKETFS_DOWN_SECONDS shortens it).  Reads of uncached
   objects fail with EIO within BOUND, cached ones are served; small files
   written meanwhile are kept (close returns 0 while journaled, EIO once
   uploads are known to fail; a file above async_close_max gets EIO) and all
   reach the bucket once the server is back.
3. test_cache_disk_full: cache_dir on a 16 MiB tmpfs, 32 MiB written: writes
   fail (ENOSPC wanted, the errno seen is printed), files whose close
   succeeded are intact in the bucket, and a 40 MiB object (bigger than the
   tmpfs) still reads correctly.
4. test_concurrency_16_threads: 16 threads reading and writing their own and
   shared files for 60 s (BUCKETFS_STRESS_SECONDS shortens it) against the
   ASan+UBSan build ($BUCKETFS_ASAN_BUILD; without it the plain build, said
   so on stdout); no error, no sanitizer report, the daemon exits 0, and the
   bucket matches what the mount showed.
5. test_bad_answers_on_the_mount: every listing answer malformed, then
   endless (160 MiB, or chunked without end): readdir fails or shows the last
   good listing, within BOUND, and the daemon grows by less than 80 MiB;
   every upload answered with a wrong ETag: close reports EIO, and once the
   faults stop the kept data reaches the bucket.

Runs on s3rver; BUCKETFS_FAULTS_SWIFT=1 adds Swift (if in BUCKETFS_S3SERVERS).
"""

import errno
import hashlib
import os
import random
import subprocess
import threading
import time
from collections import Counter

import pytest

from conftest import SERVER_KINDS
from mount import BUILD, Mount, bulk_put, sanitizer_env
from refcheck import list_objects, object_bytes, sha256_file

KiB = 1 << 10
MiB = 1 << 20

FAULT_OPTS = {'readwrite_timeout': 2, 'connect_timeout': 2, 'retries': 2,
              'retry_max_seconds': 8}

# At most this many S3 requests run one after another within one syscall:
# the close of a multipart file may wait for the background upload of that
# file and then make its own, each InitiateMultipartUpload, a round of parts,
# Complete, the HEAD that checks Complete's ETag and an abort; a read or a
# listing makes fewer.
SERIAL_REQUESTS = 10


def request_bound(opts):
    """Seconds one S3 request (with its retries) may take under these mount
    options, from the S3 layer's retry loop (s3/http.c): every attempt gives
    up after connect_timeout + readwrite_timeout without progress, the backoff
    before retry i is at most min(10, 0.1 * 2^i) s, and no retry starts after
    retry_max_seconds."""
    attempt = opts['connect_timeout'] + opts['readwrite_timeout']
    backoff = sum(min(10.0, 0.1 * 2 ** i) for i in range(opts['retries']))
    by_count = (1 + opts['retries']) * attempt + backoff
    by_budget = opts['retry_max_seconds'] + attempt
    return min(by_count, by_budget)


def syscall_bound(opts):
    return SERIAL_REQUESTS * request_bound(opts)


# No syscall of the fault mounts may take longer than this (120 s with
# FAULT_OPTS: 12 s per request).
BOUND = syscall_bound(FAULT_OPTS)

ALL_FAULTS = ['http500', 'http503', 'slowdown', 'reset', 'truncate', 'stall', 'badxml',
              'hugexml', 'badetag']

# Error lines the faults cause on purpose (failed requests and uploads).
EXPECTED_ERRORS = [r'(?i)upload', r'(?i)(reset|connect|recv|send|timed? ?out|'
                   r'Input/output|EIO|server|HTTP|network|transfer|retr|InternalError|'
                   r'SlowDown|ServiceUnavailable|truncat|partial|malformed|larger than|'
                   r'ETag|Protocol error)']

ASAN_BUILD = os.environ.get('BUCKETFS_ASAN_BUILD')

_servers = ['s3rver'] + (['swift'] if os.environ.get('BUCKETFS_FAULTS_SWIFT') else [])


@pytest.fixture(params=[k for k in _servers if k in SERVER_KINDS] or ['s3rver'])
def server(request):
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------- helpers

class Ops:
    """Times every syscall of the workload and records its outcome."""

    def __init__(self, bound=BOUND):
        self.bound = bound
        self.lock = threading.Lock()
        self.outcomes = Counter()      # (op, 'ok' | errno name) -> count
        self.slow = []                 # (seconds, op, path, outcome) over bound
        self.max = (0.0, None, None)
        self.wrong = []                # data returned successfully but wrong

    def call(self, op, path, fn, *args):
        t0 = time.monotonic()
        res = 'ok'
        try:
            return fn(*args)
        except OSError as e:
            res = errno.errorcode.get(e.errno, str(e.errno))
            raise
        finally:
            dt = time.monotonic() - t0
            with self.lock:
                self.outcomes[(op, res)] += 1
                if dt > self.max[0]:
                    self.max = (dt, op, path)
                if dt > self.bound:
                    self.slow.append((dt, op, path, res))

    def write_file(self, path, data, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
        """open/write.../close; returns (outcome, stage): ('ok', None) or
        (errno name, 'open' | 'write' | 'close')."""
        try:
            fd = self.call('open-w', path, os.open, path, flags, 0o644)
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno)), 'open'
        v = memoryview(data)
        try:
            while v:
                n = self.call('write', path, os.write, fd, v[:MiB])
                v = v[n:]
        except OSError as e:
            try:
                self.call('close', path, os.close, fd)
            except OSError:
                pass
            return errno.errorcode.get(e.errno, str(e.errno)), 'write'
        try:
            self.call('close', path, os.close, fd)
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno)), 'close'
        return 'ok', None

    def read_file(self, path):
        """Whole content, or raises OSError (closing what it opened)."""
        fd = self.call('open-r', path, os.open, path, os.O_RDONLY)
        out = []
        try:
            while True:
                b = self.call('read', path, os.read, fd, MiB)
                if not b:
                    break
                out.append(b)
        finally:
            try:
                self.call('close-r', path, os.close, fd)
            except OSError:
                pass
        return b''.join(out)

    def report(self, title):
        print('--- %s: syscall outcomes' % title)
        for (op, res), n in sorted(self.outcomes.items()):
            print('  %-8s %-10s %6d' % (op, res, n))
        print('  slowest: %.2f s (%s %s); over %gs: %d' % (
            self.max[0], self.max[1], self.max[2], self.bound, len(self.slow)))

    def errors(self):
        return {k: n for k, n in self.outcomes.items() if k[1] != 'ok'}


def run_threads(fns, duration, bound=BOUND):
    """Runs each fn(stop_event) in a thread for `duration` s; fails on a hang
    (a thread not done within `bound` s after stop) or an exception."""
    stop = threading.Event()
    excs = []

    def wrap(fn):
        try:
            fn(stop)
        except BaseException as e:  # noqa: BLE001 - reported below
            import traceback
            excs.append(traceback.format_exc())
            stop.set()
            del e

    ts = [threading.Thread(target=wrap, args=(fn,), daemon=True) for fn in fns]
    for t in ts:
        t.start()
    stop.wait(duration)
    stop.set()
    deadline = time.monotonic() + bound
    for t in ts:
        t.join(max(0.1, deadline - time.monotonic()))
    hung = [t.name for t in ts if t.is_alive()]
    assert not hung, 'threads still in a syscall %gs after the end: %s' % (bound, hung)
    assert not excs, 'worker failed:\n' + '\n'.join(excs)


def wait_for_keys(server, bucket, want, timeout):
    """Polls the bucket (straight to the server) until every key of
    want {key: bytes} is there with its size; returns seconds waited."""
    t0 = time.monotonic()
    left = dict(want)
    while left:
        for k in list(left):
            st, h, _ = server.request('HEAD', '/%s/%s' % (bucket, k))
            if st == 200 and int(h.get('content-length', -1)) == len(left[k]):
                del left[k]
        if not left:
            break
        if time.monotonic() - t0 > timeout:
            raise AssertionError('not in the bucket %ds after the server came back: %s' % (
                timeout, sorted(left)))
        time.sleep(0.5)
    return time.monotonic() - t0


def errname(e):
    return errno.errorcode.get(e.errno, str(e.errno))


# ---------------------------------------------------------------- 1. mixed workload

FAULT_RATES = [float(x) for x in os.environ.get('BUCKETFS_FAULT_RATES', '0.15').split(',')]


@pytest.mark.parametrize('rate', FAULT_RATES, ids=lambda r: '%g%%' % (100 * r))
def test_mixed_workload_under_faults(server, make_faultproxy, tmp_path, rate):
    rng = random.Random(1234)
    bucket = server.new_bucket()
    proxy = make_faultproxy(server)
    # read-only objects, and the writers' files in their first version
    ro = {'r/r%d.bin' % i: os.urandom(s) for i, s in
          enumerate([3 * KiB, 200 * KiB, 900 * KiB, 3 * MiB, 6 * MiB + 123])}
    wsizes = [lambda: rng.randrange(1, 300 * KiB)] * 6 + \
             [lambda: rng.randrange(2 * MiB, 7 * MiB)] * 2
    wfiles = ['w/f%d.bin' % i for i in range(len(wsizes))]
    first = {k: os.urandom(wsizes[i]()) for i, k in enumerate(wfiles)}
    bulk_put(server, bucket, dict(ro, **first))
    # the reference directory: what the bucket must hold in the end
    ref = tmp_path / 'ref'

    def ref_put(k, data):
        p = ref / k
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    for k, data in dict(ro, **first).items():
        ref_put(k, data)

    # a cache smaller than what is read: reads keep going to the server
    opts = dict(FAULT_OPTS, url=proxy.endpoint, multipart_size=5, parallel_count=2,
                list_ttl=1, cache_size='8M')
    m = Mount(server, bucket, tmp_path, opts=opts)
    m.expected_errors = EXPECTED_ERRORS
    ops = Ops()
    # per writable file: its lock (one writer or reader at a time, so a
    # reader knows what it must see), what the mount must show (None:
    # unknown after a failed write), the last content closed without error,
    # the last attempt and its outcome
    state = {k: {'lock': threading.Lock(), 'known': first[k], 'ok': first[k],
                 'last': first[k], 'res': ('seeded', None)} for k in wfiles}
    nwriters, nreaders = 3, 3
    with m:
        os.listdir(m.mp)
        # a rewrite drawn for an answer it does not fit (malformed XML for
        # an object's bytes) waits for the next XML answer / upload answer
        proxy.configure(rate=rate, kinds=ALL_FAULTS, stall_seconds=3, seed=42,
                        defer_rewrites=True)

        def writer(idx):
            mine = wfiles[idx::nwriters]
            r = random.Random(idx)

            def run(stop):
                while not stop.is_set():
                    k = r.choice(mine)
                    data = os.urandom(wsizes[wfiles.index(k)]())
                    s = state[k]
                    with s['lock']:
                        res = ops.write_file(os.path.join(m.mp, k), data)
                        s['last'], s['res'] = data, res
                        if res[0] == 'ok':
                            s['known'] = s['ok'] = data
                            ref_put(k, data)
                        else:
                            s['known'] = None
                    time.sleep(r.random() * 0.2)
            return run

        def reader(idx):
            r = random.Random(100 + idx)

            def run(stop):
                while not stop.is_set():
                    x = r.random()
                    if x < 0.1:
                        try:
                            ops.call('listdir', 'w', os.listdir, os.path.join(m.mp, 'w'))
                        except OSError:
                            pass
                        continue
                    if x < 0.5:
                        k = r.choice(list(ro))
                        try:
                            got = ops.read_file(os.path.join(m.mp, k))
                        except OSError:
                            continue
                        if got != ro[k]:
                            ops.wrong.append('%s %s: read %d bytes, want %d (sha differs)' % (
                                time.strftime('%H:%M:%S'), k, len(got), len(ro[k])))
                        continue
                    k = r.choice(wfiles)
                    s = state[k]
                    with s['lock']:
                        try:
                            got = ops.read_file(os.path.join(m.mp, k))
                        except OSError:
                            continue
                        if s['known'] is not None and got != s['known']:
                            same = sum(a == b for a, b in zip(got, s['known']))
                            ops.wrong.append('%s %s: read %d bytes, want %d, %d bytes equal '
                                             '(last write %s)' % (
                                                 time.strftime('%H:%M:%S'), k, len(got),
                                                 len(s['known']), same, s['res']))
                    time.sleep(r.random() * 0.05)
            return run

        t0 = time.monotonic()
        run_threads([writer(i) for i in range(nwriters)] + [reader(i) for i in range(nreaders)],
                    duration=25)
        st, pending = proxy.stats(), proxy.config()['pending']
        proxy.clear()
        applied = st['applied']
        print('workload ran %.1f s; %d requests, faults applied: %s (%.1f%%); deferred to '
              'an answer they fit: %s, left pending: %s, dropped: %s; malformed XML: %s; '
              'endless XML: %.0f MiB sent' % (
                  time.monotonic() - t0, st['requests'], applied,
                  100.0 * sum(applied.values()) / max(1, st['requests']),
                  st['deferred'], pending, st['not_applied'], st['garbled'],
                  st['huge_bytes_sent'] / MiB))
        ops.report('mixed workload, %g%% faults' % (100 * rate))
        print('syscall bound %.0f s = %d serial requests x %.1f s per request (%s)' % (
            BOUND, SERIAL_REQUESTS, request_bound(FAULT_OPTS), FAULT_OPTS))
        missing = set(ALL_FAULTS) - {k for k, n in applied.items() if n > 0}
        assert not missing, 'fault kinds never applied: %s' % sorted(missing)
        assert not ops.slow, 'syscalls over %gs: %r' % (BOUND, ops.slow)
        if ops.wrong:   # what the proxy did to those keys, for the post-mortem
            for w in ops.wrong:
                key = w.split()[1].rstrip(':')
                for e in proxy.log():
                    if key in e['target']:
                        print('  proxy #%d %s %s fault=%s status=%s' % (
                            e['n'], e['method'], e['target'][:80], e['fault'], e['status']))
        assert not ops.wrong, 'wrong data read without an error:\n' + '\n'.join(ops.wrong)
        t0 = time.monotonic()
        m.unmount(timeout=120)   # waits for the uploads
        print('unmount (uploads drained) took %.1f s' % (time.monotonic() - t0))

        # the bucket, straight from the server, against the reference dir
        keys = list_objects(server, bucket)
        problems, other = [], []
        ref_files = sorted(str(p.relative_to(ref)) for p in ref.rglob('*') if p.is_file())
        assert sorted(keys) == ref_files, 'bucket keys %r, reference files %r' % (
            sorted(keys), ref_files)
        for k in ref_files:
            want = (ref / k).read_bytes()
            body = object_bytes(server, bucket, k)
            s = state.get(k)
            failed = s is not None and s['res'][0] not in ('ok', 'seeded')
            if failed and s['res'][1] == 'close' and s['last'] != want:
                # close reported the upload's failure, but the data was
                # kept and must have been uploaded once the faults stopped
                if body == s['last']:
                    other.append('%s: last write failed %s at close; the bucket has that '
                                 'attempt (kept, uploaded later)' % (k, s['res'][0]))
                else:
                    problems.append('%s: last write failed %s at close and its data never '
                                    'reached the bucket (%s)' % (
                                        k, s['res'][0], 'it has the version before'
                                        if body == want else '%d other bytes' % len(body)))
                continue
            if body == want:
                if failed:
                    other.append('%s: last write failed %s at %s; the bucket has the version '
                                 'before' % (k, s['res'][0], s['res'][1]))
                continue
            problems.append('%s: bucket has %d bytes (sha %s), the reference %d%s' % (
                k, len(body), hashlib.sha256(body).hexdigest()[:12], len(want),
                '' if not s else '; last write %s, the attempt had %d bytes' % (
                    s['res'], len(s['last']))))
        for line in other:
            print(line)
        assert not problems, '\n'.join(problems)

        # and a remount (faults off) shows what the bucket holds
        m.mount()
        for k in wfiles + list(ro):
            want = object_bytes(server, bucket, k)
            assert open(os.path.join(m.mp, k), 'rb').read() == want, k


# ---------------------------------------------------------------- 2. server down

def test_server_down_and_back(server, make_faultproxy, tmp_path):
    bucket = server.new_bucket()
    proxy = make_faultproxy(server)
    cached = os.urandom(512 * KiB)
    uncached = os.urandom(3 * MiB)          # above small_file_size: no GET at listing
    bulk_put(server, bucket, {'d/cached.bin': cached, 'd/uncached.bin': uncached})
    opts = dict(FAULT_OPTS, url=proxy.endpoint, retries=1, retry_max_seconds=3,
                list_ttl=600)
    m = Mount(server, bucket, tmp_path, opts=opts)
    m.expected_errors = EXPECTED_ERRORS
    ops = Ops()
    with m:
        d = os.path.join(m.mp, 'd')
        assert sorted(os.listdir(d)) == ['cached.bin', 'uncached.bin']
        assert os.stat(os.path.join(d, 'uncached.bin')).st_size == len(uncached)
        assert open(os.path.join(d, 'cached.bin'), 'rb').read() == cached
        os.mkdir(os.path.join(m.mp, 'up'))

        down = float(os.environ.get('BUCKETFS_DOWN_SECONDS', '60'))
        proxy.configure(rate=1.0, kinds=['drop'])
        t_down = time.monotonic()
        print('server down (every request dropped) for %.0f s' % down)
        results = {}
        try:
            ops.read_file(os.path.join(d, 'uncached.bin'))
            results['read uncached'] = 'ok'
        except OSError as e:
            results['read uncached'] = errname(e)
        try:
            got = ops.read_file(os.path.join(d, 'cached.bin'))
            results['read cached'] = 'ok' if got == cached else 'WRONG DATA'
        except OSError as e:
            results['read cached'] = errname(e)
        try:
            results['listdir'] = sorted(ops.call('listdir', d, os.listdir, d))
        except OSError as e:
            results['listdir'] = errname(e)

        small = {'up/s%d.bin' % i: os.urandom(64 * KiB + i) for i in range(5)}
        big = {'up/big.bin': os.urandom(2 * MiB)}  # above async_close_max (1M)
        try:
            ops.call('mkdir', 'up2', os.mkdir, os.path.join(m.mp, 'up2'))
            results['mkdir'] = 'ok'
        except OSError as e:
            results['mkdir'] = errname(e)
        for k, data in list(small.items()) + list(big.items()):
            results['write ' + k] = ops.write_file(os.path.join(m.mp, k), data)
        for k, data in list(small.items()) + list(big.items()):
            try:
                got = ops.read_file(os.path.join(m.mp, k))
                results['read back ' + k] = 'ok' if got == data else 'WRONG DATA'
            except OSError as e:
                results['read back ' + k] = errname(e)
        while time.monotonic() - t_down < down / 2:
            time.sleep(0.2)
        try:
            ops.read_file(os.path.join(d, 'uncached.bin'))
            results['read uncached again'] = 'ok'
        except OSError as e:
            results['read uncached again'] = errname(e)
        while time.monotonic() - t_down < down:
            time.sleep(0.2)
        proxy.clear()
        print('server back after %.1f s; proxy: %s' % (time.monotonic() - t_down,
                                                        proxy.stats()))
        for k, v in results.items():
            print('  %-28s %s' % (k, v))
        ops.report('server down')

        assert not ops.slow, 'syscalls over %gs: %r' % (BOUND, ops.slow)
        assert results['read uncached'] == 'EIO'
        assert results['read uncached again'] == 'EIO'
        assert results['read cached'] == 'ok'
        assert results['listdir'] == ['cached.bin', 'uncached.bin']
        assert results['mkdir'] == 'EIO'   # a directory is an object: made at once
        for k in small:
            assert results['write ' + k][0] in ('ok', 'EIO'), (k, results['write ' + k])
            assert results['read back ' + k] == 'ok', k
        assert results['write up/big.bin'] == ('EIO', 'close')
        assert results['read back up/big.bin'] == 'ok'

        waited = wait_for_keys(server, bucket, dict(small, **big), timeout=90)
        print('every file written while down reached the bucket %.1f s after the server '
              'came back' % waited)
        assert ops.read_file(os.path.join(d, 'uncached.bin')) == uncached
    for k, data in dict(small, **big).items():
        assert object_bytes(server, bucket, k) == data, k


# ---------------------------------------------------------------- 3. disk full

@pytest.fixture
def small_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip('mounting a tmpfs needs root')
    d = tmp_path / 'cachefs'
    d.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=16m,mode=0700', 'tmpfs', str(d)],
                   check=True)
    try:
        yield str(d)
    finally:
        subprocess.run(['umount', str(d)], check=False)


def read_sha(ops, path):
    """(sha256, size) of a file read through the mount in 1 MiB reads, or
    (errno name, bytes read before it)."""
    h = hashlib.sha256()
    size = 0
    try:
        fd = ops.call('open-r', path, os.open, path, os.O_RDONLY)
    except OSError as e:
        return errname(e), 0
    try:
        while True:
            b = ops.call('read', path, os.read, fd, MiB)
            if not b:
                return h.hexdigest(), size
            h.update(b)
            size += len(b)
    except OSError as e:
        return errname(e), size
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


@pytest.mark.parametrize('cache_size', ['1G', '8M'])
def test_cache_disk_full(server, small_tmpfs, tmp_path, cache_size):
    """cache_size 1G (the default: bigger than the disk) and 8M (half of it:
    the cache's own cap is never what stops it, staged data fills the rest)."""
    bucket = server.new_bucket()
    large = os.urandom(40 * MiB)            # bigger than the whole cache disk
    large_sha = hashlib.sha256(large).hexdigest()
    bulk_put(server, bucket, {'large.bin': large, 'large2.bin': large[::-1]})
    m = Mount(server, bucket, tmp_path, cache_dir=small_tmpfs,
              opts={'multipart_size': 5, 'cache_size': cache_size})
    m.expected_errors = EXPECTED_ERRORS + [r'(?i)(no space|ENOSPC|disk|full|stag|cache|'
                                           r'journal|index|sqlite|database)']
    ops = Ops()
    files = {'w/big%d.bin' % i: os.urandom(4 * MiB) for i in range(8)}
    files.update({'w/small%d.bin' % i: os.urandom(300 * KiB) for i in range(6)})
    results = {}
    problems = []

    def free():
        st = os.statvfs(small_tmpfs)
        return st.f_bavail * st.f_frsize / MiB

    with m:
        os.mkdir(os.path.join(m.mp, 'w'))
        # a 40 MiB read into a 16 MiB cache disk: must stream past what fits
        t0 = time.monotonic()
        r = read_sha(ops, os.path.join(m.mp, 'large.bin'))
        print('read of 40 MiB, cache disk empty: %s after %d bytes in %.1f s; free %.1f MiB' % (
            'ok' if r[0] == large_sha else r[0], r[1], time.monotonic() - t0, free()))
        if r != (large_sha, len(large)):
            problems.append('40 MiB read with an empty 16 MiB cache disk: %s after %d bytes'
                            % r)
        for k, data in files.items():
            results[k] = ops.write_file(os.path.join(m.mp, k), data)
            print('  %-16s %-18s cache disk free %5.1f MiB' % (k, results[k], free()))
        # then six 4 MiB files open at once: staged data alone fills the disk
        fds = {}
        for i in range(6):
            k = 'w/open%d.bin' % i
            files[k] = os.urandom(4 * MiB)
            try:
                fds[k] = ops.call('open-w', k, os.open, os.path.join(m.mp, k),
                                  os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            except OSError as e:
                results[k] = (errname(e), 'open')
        for k, fd in fds.items():
            try:
                v = memoryview(files[k])
                while v:
                    v = v[ops.call('write', k, os.write, fd, v[:MiB]):]
                results[k] = ('ok', None)
            except OSError as e:
                results[k] = (errname(e), 'write')
        for k, fd in fds.items():
            try:
                ops.call('close', k, os.close, fd)
            except OSError as e:
                if results[k][0] == 'ok':
                    results[k] = (errname(e), 'close')
            print('  %-16s %-18s cache disk free %5.1f MiB' % (k, results[k], free()))
        failed = {k: r for k, r in results.items() if r[0] != 'ok'}
        print('errno of the failed writes: %s' % dict(Counter(r for r in failed.values())))
        if not failed:
            problems.append('writing 59 MiB into a 16 MiB cache_dir never failed')
        if {r[0] for r in failed.values()} - {'ENOSPC'}:
            problems.append('writes failed with %s, not ENOSPC' % sorted(
                {r[0] for r in failed.values()}))
        # files whose close succeeded read back intact
        for k, r in results.items():
            if r[0] == 'ok':
                got = read_sha(ops, os.path.join(m.mp, k))
                if got[0] != hashlib.sha256(files[k]).hexdigest():
                    problems.append('%s: closed OK, reads back as %s after %d bytes' % (
                        k, got[0], got[1]))
        # a read bigger than the disk, with the disk full, streams
        t0 = time.monotonic()
        r = read_sha(ops, os.path.join(m.mp, 'large2.bin'))
        want = hashlib.sha256(large[::-1]).hexdigest()
        print('read of 40 MiB, cache disk full: %s after %d bytes in %.1f s' % (
            'ok' if r[0] == want else r[0], r[1], time.monotonic() - t0))
        if r != (want, len(large)):
            problems.append('40 MiB read with the cache disk full: %s after %d bytes' % r)
        ops.report('cache disk full')
        assert not ops.slow, 'syscalls over %gs: %r' % (BOUND, ops.slow)
        m.unmount(timeout=120)
    keys = list_objects(server, bucket)
    for k, r in results.items():
        body = object_bytes(server, bucket, k) if k in keys else None
        if r[0] == 'ok':
            if body != files[k]:
                problems.append('%s: closed OK; the bucket has %s' % (
                    k, 'nothing' if body is None else '%d other bytes' % len(body)))
        else:
            print('  %s failed (%s at %s): the bucket has %s' % (
                k, r[0], r[1], 'nothing' if body is None else
                'the content' if body == files[k] else
                'a prefix of %d bytes' % len(body) if files[k].startswith(body) else
                '%d other bytes' % len(body)))
    assert not problems, '\n'.join(problems)


# ---------------------------------------------------------------- 4. concurrency

class BinMount(Mount):
    """A Mount of the bucketfs binary of another build directory."""

    def __init__(self, *a, build=BUILD, **kw):
        super().__init__(*a, **kw)
        self.binary = os.path.join(build, 'fs', 'bucketfs')

    def argv(self):
        return [self.binary] + super().argv()[1:]


# Once a race (issue 7): a thread truncating, rewriting or reading a shared
# file while this mount's own upload of it changed its ETag got EIO (the
# fetch pinned to the old ETag: 412).  fs/write.c now takes the index's newer
# version; tests/test_posix.py forces that path deterministically.
def test_concurrency_16_threads(server, tmp_path):
    if ASAN_BUILD and os.path.exists(os.path.join(ASAN_BUILD, 'fs', 'bucketfs')):
        build = ASAN_BUILD
        print('running the ASan+UBSan build %s' % ASAN_BUILD)
    else:
        build = BUILD
        print('BUCKETFS_ASAN_BUILD not set (or not built): running the plain build %s '
              '(no sanitizer coverage)' % BUILD)
    bucket = server.new_bucket()
    shared = ['shared/s%d.bin' % i for i in range(4)]
    bulk_put(server, bucket, {k: os.urandom(100 * KiB) for k in shared})
    env = {'ASAN_OPTIONS': 'detect_leaks=1:abort_on_error=0:exitcode=99',
           'UBSAN_OPTIONS': 'print_stacktrace=1'}
    m = BinMount(server, bucket, tmp_path, build=build, env=env,
                 opts={'multipart_size': 5, 'list_ttl': 2})
    ops = Ops()
    nthreads, duration = 16, float(os.environ.get('BUCKETFS_STRESS_SECONDS', '60'))
    with m:
        os.mkdir(os.path.join(m.mp, 'own'))

        def worker(idx):
            r = random.Random(idx)
            own = os.path.join(m.mp, 'own', 't%02d.bin' % idx)
            mine = {'data': None}

            def size():
                return r.choice([r.randrange(1, 64 * KiB), r.randrange(64 * KiB, 900 * KiB),
                                 r.randrange(1 * MiB, 3 * MiB)])

            def run(stop):
                while not stop.is_set():
                    x = r.random()
                    sp = os.path.join(m.mp, r.choice(shared))
                    what = sp
                    try:
                        if x < 0.15:                       # own file, in place
                            data = os.urandom(size())
                            res = ops.write_file(own, data)
                            assert res == ('ok', None), (own, res)
                            mine['data'] = data
                        elif x < 0.25:                     # own file, write + rename
                            data = os.urandom(size())
                            res = ops.write_file(own + '.tmp', data)
                            assert res == ('ok', None), (own, res)
                            what = 'rename %s.tmp -> %s' % (own, own)
                            ops.call('rename', own, os.rename, own + '.tmp', own)
                            mine['data'] = data
                        elif x < 0.40:
                            if mine['data'] is not None:
                                got = ops.read_file(own)
                                if got != mine['data']:
                                    ops.wrong.append('%s: %d bytes, want %d' % (
                                        own, len(got), len(mine['data'])))
                        elif x < 0.50:                     # shared: overwrite
                            res = ops.write_file(sp, os.urandom(size()))
                            assert res == ('ok', None), (sp, res)
                        elif x < 0.58:                     # shared: pwrite in the middle
                            fd = ops.call('open-w', sp, os.open, sp, os.O_WRONLY)
                            try:
                                ops.call('pwrite', sp, os.pwrite, fd, os.urandom(4096),
                                         r.randrange(0, 200 * KiB))
                            finally:
                                ops.call('close', sp, os.close, fd)
                        elif x < 0.62:
                            ops.call('truncate', sp, os.truncate, sp, r.randrange(0, 300 * KiB))
                        elif x < 0.85:
                            ops.read_file(sp)
                        elif x < 0.93:
                            ops.call('stat', sp, os.stat, sp)
                        else:
                            ops.call('listdir', 'own', os.listdir, os.path.join(m.mp, 'own'))
                    except OSError as e:
                        ops.wrong.append('%s %s: %s' % (time.strftime('%H:%M:%S'), what, e))
            return run

        t0 = time.monotonic()
        run_threads([worker(i) for i in range(nthreads)], duration=duration)
        print('%d threads ran %.1f s' % (nthreads, time.monotonic() - t0))
        ops.report('16 threads')
        assert not ops.slow, 'syscalls over %gs: %r' % (BOUND, ops.slow)
        assert not ops.errors(), 'syscalls failed: %r\n%s' % (ops.errors(),
                                                              '\n'.join(ops.wrong[:20]))
        assert not ops.wrong, '\n'.join(ops.wrong[:20])
        # what the mount shows, then the bucket once uploaded
        seen = {}
        for dirpath, _, names in os.walk(m.mp):
            for n in names:
                p = os.path.join(dirpath, n)
                seen[os.path.relpath(p, m.mp)] = sha256_file(p)
        t0 = time.monotonic()
        m.unmount(timeout=120)
        print('unmount took %.1f s' % (time.monotonic() - t0))
    keys = list_objects(server, bucket)
    files = {k for k in keys if not k.endswith('/')}
    assert files == set(seen), 'bucket %r, mount %r' % (sorted(files), sorted(seen))
    bad = [k for k in seen
           if hashlib.sha256(object_bytes(server, bucket, k)).hexdigest() != seen[k]]
    assert not bad, 'bucket differs from what the mount showed: %r' % bad


# ---------------------------------------------------------------- 5. bad answers

LIST_RE = r'list-type=2'


def vm_hwm_kib(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1])
    raise AssertionError('no VmHWM for %d' % pid)


ASAN_QUARANTINE_MIB = 16


def is_asan_process(pid):
    with open('/proc/%d/maps' % pid) as f:
        return 'libasan' in f.read()


def test_bad_answers_on_the_mount(server, make_faultproxy, tmp_path):
    """Every listing answer malformed, then endless; every upload answered
    with a wrong ETag.  Listings fail (or show the last good listing) within
    BOUND and the daemon's memory stays bounded; closes report EIO rather
    than believe the uploads; once the faults stop the kept data reaches the
    bucket byte for byte."""
    bucket = server.new_bucket()
    proxy = make_faultproxy(server, seed=9)
    old = {'d/a.bin': os.urandom(10 * KiB), 'd/b.bin': os.urandom(2 * MiB)}
    bulk_put(server, bucket, old)
    opts = dict(FAULT_OPTS, url=proxy.endpoint, multipart_size=5, list_ttl=1,
                async_close_max=0)
    # ASan keeps freed blocks in a quarantine (256 MiB by default) before it
    # reuses or unmaps them, so under ASan the peak RSS would count every
    # refused 16 MiB answer ever freed; a 16 MiB quarantine still catches a
    # use after free of the last ones, and is added to the bound below.
    env = sanitizer_env(os.path.join(str(tmp_path), 'sanitizer'))
    env['ASAN_OPTIONS'] += ':quarantine_size_mb=%d' % ASAN_QUARANTINE_MIB
    m = Mount(server, bucket, tmp_path, opts=opts, env=env)
    m.expected_errors = EXPECTED_ERRORS
    ops = Ops()
    d_names = ['a.bin', 'b.bin']
    with m:
        d = os.path.join(m.mp, 'd')
        assert sorted(os.listdir(d)) == d_names
        rss0 = vm_hwm_kib(m.proc.pid)
        asan = is_asan_process(m.proc.pid)
        results = {}
        for kind, extra in [('badxml', {}), ('hugexml', {'huge_bytes': 0}),
                            ('hugexml', {'huge_bytes': 160 * MiB})]:
            name = '%s %s' % (kind, 'endless' if extra.get('huge_bytes') == 0 else
                              '160MiB' if extra else '')
            proxy.configure(rate=1.0, kinds=[kind], path_regex=LIST_RE, **extra)
            time.sleep(1.2)                     # past list_ttl
            try:
                got = sorted(ops.call('listdir', d, os.listdir, d))
                results[name] = 'ok (the last good listing)' if got == d_names else got
            except OSError as e:
                results[name] = errname(e)
            proxy.clear()
        st = proxy.stats()
        rss1 = vm_hwm_kib(m.proc.pid)

        new = {'d/new.bin': os.urandom(200 * KiB), 'd/newmp.bin': os.urandom(7 * MiB + 3)}
        proxy.configure(rate=1.0, kinds=['badetag'], methods=['PUT', 'POST'])
        for k, data in new.items():
            results['write ' + k] = ops.write_file(os.path.join(m.mp, k), data)
        proxy.clear()
        for k, v in results.items():
            print('  %-22s %s' % (k, v))
        print('proxy: faults %s, not applied %s, garbled %s, endless XML sent %.0f MiB' % (
            st['faults'], st['not_applied'], st['garbled'], st['huge_bytes_sent'] / MiB))
        print('daemon peak RSS %.1f MiB before the bad listings, %.1f MiB after' % (
            rss0 / 1024, rss1 / 1024))
        ops.report('bad answers')
        assert not ops.slow, 'syscalls over %gs: %r' % (BOUND, ops.slow)
        for k, v in results.items():
            if k.startswith('write'):
                assert v == ('EIO', 'close'), (k, v)
            else:
                assert v in ('EPROTO', 'EIO', 'ok (the last good listing)'), (k, v)
        # answers of 160 MiB or without end, ~100 MiB sent in all: the daemon
        # holds at most 16 MiB per listing in flight (a few run at once, and
        # realloc copies), never the answers
        bound = 80 * 1024 + (ASAN_QUARANTINE_MIB * 1024 if asan else 0)
        assert rss1 - rss0 < bound, 'the daemon grew by %d KiB (bound %d KiB%s)' % (
            rss1 - rss0, bound, ', ASan' if asan else '')
        # each endless answer was refused after ~16 MiB
        assert st['huge_bytes_sent'] < st['faults']['hugexml'] * 20 * MiB
        # faults off: the listing is right again, and the kept data uploads
        time.sleep(1.2)
        assert sorted(os.listdir(d)) == sorted(d_names + ['new.bin', 'newmp.bin'])
        waited = wait_for_keys(server, bucket, new, timeout=90)
        print('the kept files reached the bucket %.1f s after the faults stopped' % waited)
    for k, data in dict(old, **new).items():
        assert object_bytes(server, bucket, k) == data, k
