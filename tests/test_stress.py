"""A concurrent workload on one mount, for the sanitizers (issue 7): what CI
runs with the ThreadSanitizer build (tools/test.sh, build-tsan) and, in the
main suite, with the ASan+UBSan one.

For BUCKETFS_STRESS_SECONDS (default 8) these threads run at once:
  - writers: each rewrites its own files (sizes from bytes to 2 MiB), renames
    them, unlinks and recreates one, and reads them back;
  - readers: all read random ranges of the same pre-existing objects
    (uploaded before the mount, never written) and check every byte;
  - region writers: all keep one shared file open and pwrite/pread their own
    64 KiB region of it, fsync now and then (uploads while others write);
  - listers: readdir and stat of the directories the writers change;
  - a prober: stat of the read-only objects and of names that do not exist,
    one at a time (lookups that probe S3 for one name once list_ttl, 1 s,
    has passed, racing the listers' listings of the same directory).
No syscall may fail (the listers tolerate ENOENT for a name that a writer
renamed between readdir and stat).  Then every file reads back as last
written, the daemon exits 0 at unmount with no sanitizer report
(tests/mount.py), and the bucket holds the same bytes.
"""

import errno
import os
import random
import threading

from mount import Mount, bulk_put
from refcheck import object_bytes

KiB = 1 << 10
MiB = 1 << 20
SECONDS = float(os.environ.get('BUCKETFS_STRESS_SECONDS', '8'))
WRITERS, READERS, REGION_WRITERS, LISTERS, PROBERS = 3, 3, 3, 2, 1
REGION = 64 * KiB


def guarded(failures, stop):
    """A decorator for a worker thread: an exception it raises goes to
    FAILURES (with the worker's name and arguments) and sets STOP."""
    def guard(fn):
        def run(*a):
            try:
                fn(*a)
            except BaseException as e:  # noqa: B902 - reported by the main thread
                failures.append('%s%r: %r' % (fn.__name__, a, e))
                stop.set()
        return run
    return guard


def run_threads(threads, stop, failures):
    """Runs THREADS for SECONDS (or until one sets STOP), then checks that
    each ended and none failed."""
    for t in threads:
        t.start()
    stop.wait(SECONDS)
    stop.set()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), 'a worker thread hangs'
    assert not failures, '\n'.join(failures)


def test_concurrent_workload(s3rver, tmp_path):
    server = s3rver
    bucket = server.new_bucket()
    rnd = random.Random(7)
    shared = {'ro/r%d.bin' % i: rnd.randbytes(n)
              for i, n in enumerate((3000, 700 * KiB, 2 * MiB + 12345))}
    bulk_put(server, bucket, shared)
    stop = threading.Event()
    failures = []
    final = {}  # relative path -> bytes the mount must hold at the end
    lock = threading.Lock()
    counts = {'writes': 0, 'reads': 0, 'region': 0, 'lists': 0, 'probes': 0}

    def count(k):
        with lock:
            counts[k] += 1

    guard = guarded(failures, stop)

    with Mount(server, bucket, tmp_path, opts={'list_ttl': 1}) as m:
        mp = m.mp
        for d in ('w', 'region'):
            os.mkdir(os.path.join(mp, d))
        region_path = os.path.join(mp, 'region', 'shared.bin')
        with open(region_path, 'wb') as f:
            f.write(b'\0' * (REGION * REGION_WRITERS))

        @guard
        def writer(idx):
            r = random.Random(100 + idx)
            d = os.path.join(mp, 'w', 'd%d' % idx)
            os.mkdir(d)
            mine = {}
            while not stop.is_set():
                name = 'f%d' % r.randrange(4)
                p = os.path.join(d, name)
                data = r.randbytes(r.choice([r.randrange(1, 4 * KiB),
                                             r.randrange(4 * KiB, 300 * KiB),
                                             r.randrange(1 * MiB, 2 * MiB)]))
                x = r.random()
                if x < 0.3:  # write a temporary, rename over
                    with open(p + '.tmp', 'wb') as f:
                        f.write(data)
                    os.rename(p + '.tmp', p)
                elif x < 0.4 and name in mine:  # unlink, recreate
                    os.unlink(p)
                    del mine[name]
                    with open(p, 'wb') as f:
                        f.write(data)
                else:  # rewrite in place
                    with open(p, 'wb') as f:
                        f.write(data)
                mine[name] = data
                count('writes')
                for n, want in list(mine.items())[:2]:
                    with open(os.path.join(d, n), 'rb') as f:
                        got = f.read()
                    assert got == want, '%s/%s: %d bytes read, %d written' % (
                        d, n, len(got), len(want))
            with lock:
                for n, data in mine.items():
                    final['w/d%d/%s' % (idx, n)] = data

        @guard
        def reader(idx):
            r = random.Random(200 + idx)
            keys = sorted(shared)
            while not stop.is_set():
                k = r.choice(keys)
                want = shared[k]
                off = r.randrange(len(want))
                n = r.choice([1, 4 * KiB, 200 * KiB, 1 * MiB + 7])
                with open(os.path.join(mp, k), 'rb') as f:
                    f.seek(off)
                    got = f.read(n)
                assert got == want[off:off + n], '%s [%d, +%d): wrong bytes' % (k, off, n)
                count('reads')

        @guard
        def region_writer(idx):
            r = random.Random(300 + idx)
            fd = os.open(region_path, os.O_RDWR)
            try:
                base = idx * REGION
                mine = b'\0' * REGION
                while not stop.is_set():
                    off = r.randrange(REGION)
                    n = min(REGION - off, r.randrange(1, 16 * KiB))
                    data = r.randbytes(n)
                    assert os.pwrite(fd, data, base + off) == n
                    mine = mine[:off] + data + mine[off + n:]
                    assert os.pread(fd, REGION, base) == mine, 'region %d differs' % idx
                    if r.random() < 0.1:
                        os.fsync(fd)
                    count('region')
                with lock:
                    final.setdefault('region', {})[idx] = mine
            finally:
                os.close(fd)

        def walk_error(e):
            if e.errno != errno.ENOENT:  # a directory gone since its parent's readdir
                raise e

        @guard
        def lister(idx):
            while not stop.is_set():
                for dirpath, dirnames, filenames in os.walk(mp, onerror=walk_error):
                    for n in filenames:
                        try:
                            os.stat(os.path.join(dirpath, n))
                        except FileNotFoundError:
                            pass  # renamed or unlinked since the readdir
                count('lists')

        @guard
        def prober(idx):
            r = random.Random(400 + idx)
            keys = sorted(shared)
            while not stop.is_set():
                k = r.choice(keys)
                assert os.stat(os.path.join(mp, k)).st_size == len(shared[k]), k
                absent = os.path.join(mp, 'ro', 'absent%d' % r.randrange(50))
                assert not os.path.exists(absent), absent
                count('probes')

        threads = ([threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)] +
                   [threading.Thread(target=reader, args=(i,)) for i in range(READERS)] +
                   [threading.Thread(target=region_writer, args=(i,))
                    for i in range(REGION_WRITERS)] +
                   [threading.Thread(target=lister, args=(i,)) for i in range(LISTERS)] +
                   [threading.Thread(target=prober, args=(i,)) for i in range(PROBERS)])
        run_threads(threads, stop, failures)
        print('%.0f s: %r' % (SECONDS, counts))
        assert all(counts.values()), 'a kind of worker did nothing: %r' % counts

        regions = final.pop('region')
        final['region/shared.bin'] = b''.join(regions[i] for i in range(REGION_WRITERS))
        final.update(shared)
        for rel, want in final.items():
            with open(os.path.join(mp, rel), 'rb') as f:
                assert f.read() == want, rel
        names = sorted(os.listdir(os.path.join(mp, 'w', 'd0')))
        assert not [n for n in names if n.endswith('.tmp')], names
    # after the unmount (every upload done): the bucket holds the same bytes
    for rel, want in final.items():
        assert object_bytes(server, bucket, rel) == want, rel


def test_shared_file_read_back(s3rver, tmp_path):
    """Writers of their own pages of one shared file read back exactly what
    they wrote while other threads stat and open the file.  Before the fix
    the kernel dropped its cached pages at each attribute refresh that saw a
    new mtime and at each open (libfuse's auto_inval_data, auto_cache); a
    readahead then fetched a page again between the kernel's copy of a
    write and the daemon's, and the writer read back its old bytes - within
    a second or two here, on a plain build."""
    server = s3rver
    bucket = server.new_bucket()
    page, npages = 4096, 16
    stop = threading.Event()
    failures = []
    writes = [0] * REGION_WRITERS
    opens = [0]
    final = {}
    guard = guarded(failures, stop)

    with Mount(server, bucket, tmp_path) as m:
        path = os.path.join(m.mp, 'shared.bin')
        with open(path, 'wb') as f:
            f.write(b'\0' * (page * npages * REGION_WRITERS))

        @guard
        def writer(idx):
            r = random.Random(400 + idx)
            fd = os.open(path, os.O_RDWR)
            base = idx * page * npages
            mine = bytearray(page * npages)
            try:
                while not stop.is_set():
                    off = r.randrange(npages) * page
                    data = r.randbytes(min(len(mine) - off, r.randrange(1, 4) * page))
                    assert os.pwrite(fd, data, base + off) == len(data)
                    mine[off:off + len(data)] = data
                    got = os.pread(fd, len(mine), base)
                    if got != mine:
                        at = next(i for i in range(len(mine)) if got[i] != mine[i])
                        raise AssertionError('writer %d: byte %d differs after %d writes'
                                             % (idx, at, writes[idx]))
                    writes[idx] += 1
                final[idx] = bytes(mine)
            finally:
                os.close(fd)

        def opener():
            while not stop.is_set():
                os.stat(path)
                with open(path, 'rb') as f:
                    f.read(100)
                opens[0] += 1

        threads = ([threading.Thread(target=writer, args=(i,)) for i in range(REGION_WRITERS)] +
                   [threading.Thread(target=opener)])
        run_threads(threads, stop, failures)
        print('%.0f s: %r writes, %d opens' % (SECONDS, writes, opens[0]))
        assert all(writes) and opens[0], 'a thread did nothing'
        want = b''.join(final[i] for i in range(REGION_WRITERS))
        with open(path, 'rb') as f:
            assert f.read() == want
    assert object_bytes(server, bucket, 'shared.bin') == want
