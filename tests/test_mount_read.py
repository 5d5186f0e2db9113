"""Read-only mounts of the real binary against s3rver and Swift (issue 3):
listings and contents against a reference directory and against what aws-cli
sees, s3fs metadata, request counts from the index, freshness, the cache cap.
"""

import hashlib
import os
import random
import stat
import subprocess
import time

import pytest

from mount import Mount, bulk_put, tree_of


def aws_keys(server, bucket):
    import json
    p = server.aws('s3api', 'list-objects-v2', '--bucket', bucket, '--query', 'Contents[].Key',
                   '--output', 'json')
    return sorted(json.loads(p.stdout) or [])


def test_tree_from_aws_cp_reads_identically(s3server, bucket, tmp_path):
    src = tmp_path / 'src'
    names = ['plain.txt', 'with space.txt', 'plus+sign', 'per%cent', 'hash#tag',
             'ünïcödé 日本.txt', 'empty', 'd1/d2/d3/deep.txt', 'd1/sp ace/x+y%z#w',
             'big/64MiB.bin']
    for n in names:
        p = src / n
        p.parent.mkdir(parents=True, exist_ok=True)
        if n == 'empty':
            p.write_bytes(b'')
        elif n.startswith('big/'):
            with open(p, 'wb') as f:
                for i in range(64):
                    f.write(os.urandom(1 << 20))
        else:
            p.write_bytes(os.urandom(1000 + len(n) * 97))
    s3server.aws('s3', 'cp', '--recursive', '--quiet', str(src), 's3://%s/' % bucket)
    # no directory objects: every directory below is implicit
    assert not [k for k in aws_keys(s3server, bucket) if k.endswith('/')]

    with Mount(s3server, bucket, tmp_path) as m:
        want = tree_of(str(src))
        got = tree_of(m.mp)
        assert got == want
        # the same names aws-cli lists
        files = sorted(k for k, v in got.items() if v[0] == 'file')
        assert files == aws_keys(s3server, bucket)
        st = os.stat(os.path.join(m.mp, 'd1'))
        assert stat.S_ISDIR(st.st_mode)


def test_s3fs_metadata_is_shown_exactly(s3server, bucket, tmp_path):
    body = tmp_path / 'body'
    body.write_bytes(b'contents\n')
    target = tmp_path / 'target'
    target.write_bytes(b'../some/where else')
    empty = tmp_path / 'empty'
    empty.write_bytes(b'')
    s3server.aws('s3api', 'put-object', '--bucket', bucket, '--key', 'owned.txt', '--body',
                 str(body), '--metadata',
                 'mode=33256,uid=1234,gid=5678,mtime=1600000000,ctime=1600000100,'
                 'atime=1600000200')
    s3server.aws('s3api', 'put-object', '--bucket', bucket, '--key', 'rclone.txt', '--body',
                 str(body), '--metadata', 'mtime=1500000000.123456789')
    s3server.aws('s3api', 'put-object', '--bucket', bucket, '--key', 'link', '--body',
                 str(target), '--metadata', 'mode=41471,mtime=1600000000')
    s3server.aws('s3api', 'put-object', '--bucket', bucket, '--key', 'private/', '--body',
                 str(empty), '--metadata', 'mode=16832,uid=42,gid=43,mtime=1400000000')
    s3server.aws('s3api', 'put-object', '--bucket', bucket, '--key', 'private/inner',
                 '--body', str(body))
    s3server.aws('s3api', 'put-object', '--bucket', bucket, '--key', 'plain', '--body',
                 str(body))
    head = s3server.aws('s3api', 'head-object', '--bucket', bucket, '--key', 'plain').stdout
    import json
    lm = json.loads(head)['LastModified']

    with Mount(s3server, bucket, tmp_path, opts={'uid': 1000, 'gid': 1000, 'umask': '027'}) as m:
        st = os.lstat(os.path.join(m.mp, 'owned.txt'))
        assert st.st_mode == 33256 and st.st_uid == 1234 and st.st_gid == 5678
        assert st.st_mtime == 1600000000 and st.st_ctime == 1600000100
        assert st.st_atime == 1600000200
        st = os.lstat(os.path.join(m.mp, 'rclone.txt'))
        assert st.st_mtime_ns == 1500000000123456789
        st = os.lstat(os.path.join(m.mp, 'link'))
        assert stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o777
        assert os.readlink(os.path.join(m.mp, 'link')) == '../some/where else'
        st = os.lstat(os.path.join(m.mp, 'private'))
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
        assert (st.st_uid, st.st_gid, st.st_mtime) == (42, 43, 1400000000)
        assert os.listdir(os.path.join(m.mp, 'private')) == ['inner']
        # no metadata: the mount's defaults and LastModified
        st = os.lstat(os.path.join(m.mp, 'plain'))
        assert stat.S_IMODE(st.st_mode) == 0o640 and stat.S_ISREG(st.st_mode)
        assert (st.st_uid, st.st_gid) == (1000, 1000)
        from datetime import datetime
        assert abs(st.st_mtime - datetime.fromisoformat(lm).timestamp()) < 1
        assert open(os.path.join(m.mp, 'owned.txt'), 'rb').read() == b'contents\n'


def walk_ls(mp):
    p = subprocess.run(['ls', '-lR', mp], capture_output=True, text=True, check=True)
    return p.stdout


def delta(after, before):
    return {k: after[k] - before.get(k, 0) for k in after}


def test_ten_thousand_objects_cost_nothing_after_the_first_walk(s3server, bucket, tmp_path):
    # 100 x 100 on s3rver; Swift takes ~5x longer per small request, so it
    # walks 20 x 100 there to keep CI within its time (BUCKETFS_SWIFT_DIRS).
    dirs = 100 if type(s3server).__name__ == 'S3rver' else \
        int(os.environ.get('BUCKETFS_SWIFT_DIRS', '20'))
    items = {'dir%03d/file%03d.txt' % (d, f): b'%d-%d\n' % (d, f)
             for d in range(dirs) for f in range(100)}
    t0 = time.monotonic()
    bulk_put(s3server, bucket, items)
    print('put %d objects in %.1f s' % (len(items), time.monotonic() - t0))
    # list_ttl long for the first three walks, then short: the fourth walk
    # comes after it expired.
    with Mount(s3server, bucket, tmp_path, opts={'list_ttl': 3600}) as m:
        s0 = m.requests()
        t0 = time.monotonic()
        first = walk_ls(m.mp)
        s1 = m.requests()
        print('first ls -lR: %.1f s, requests %s' % (time.monotonic() - t0, delta(s1, s0)))
        assert first.count('file') == len(items)
        t0 = time.monotonic()
        second = walk_ls(m.mp)
        s2 = m.requests()
        print('second ls -lR: %.1f s' % (time.monotonic() - t0))
        assert second == first
        assert sum(delta(s2, s1).values()) == 0, delta(s2, s1)
        m.remount()
        s3 = m.requests()
        third = walk_ls(m.mp)
        s4 = m.requests()
        assert third == first
        # the listing is younger than list_ttl: nothing at all
        assert sum(delta(s4, s3).values()) == 0, delta(s4, s3)
        # a TTL longer than one walk takes, and wait it out
        m.opts['list_ttl'] = 5
        m.remount()
        time.sleep(5.5)
        s5 = m.requests()
        t0 = time.monotonic()
        fourth = walk_ls(m.mp)
        s6 = m.requests()
        d = delta(s6, s5)
        print('ls -lR after list_ttl: %.1f s, requests %s' % (time.monotonic() - t0, d))
        assert fourth == first
        assert d['head'] == 0 and d['get'] == 0, d
        assert 1 <= d['list'] <= len(items) // 1000 + 1, d


def test_a_lookup_asks_for_one_name_not_the_whole_directory(s3server, bucket, tmp_path):
    """A lookup in a directory not listed yet probes that one name (fs/probe.c:
    LIST "name/" then LIST "name", one key each) instead of listing the
    directory flat (3 pages here).  A later listing of the directory keeps
    what the probes stored: the cached contents are not fetched again."""
    items = {'many/d%02d/f%03d' % (d, f): b'%d %d' % (d, f) for d in range(21) for f in range(100)}
    items.update({'top.txt': b'top\n', 'name': b'the file', 'name.bak': b'the backup',
                  'odd.txt': b'odd', 'both': b'a file hidden by the directory',
                  'both/inner': b'inner', 'marked/': b'', 'marked/x': b'x'})
    bulk_put(s3server, bucket, items)
    with Mount(s3server, bucket, tmp_path, opts={'list_ttl': 3600}) as m:
        path = lambda n: os.path.join(m.mp, n)   # noqa: E731
        r0 = m.requests()
        assert open(path('top.txt'), 'rb').read() == b'top\n'
        d = delta(m.requests(), r0)
        # LIST top.txt/, LIST top.txt, one GET (attributes and contents)
        assert d['list'] == 2 and d['get'] == 1 and d['head'] == 0, d
        r1 = m.requests()
        assert stat.S_ISDIR(os.stat(path('many')).st_mode)
        assert open(path('name'), 'rb').read() == b'the file'
        assert open(path('name.bak'), 'rb').read() == b'the backup'
        assert stat.S_ISDIR(os.stat(path('both')).st_mode)   # the directory wins
        assert stat.S_ISDIR(os.stat(path('marked')).st_mode)
        for absent in ('odd', 'nothere', 'many.txt'):
            assert not os.path.exists(path(absent)), absent
        d = delta(m.requests(), r1)
        # many, both, marked: one LIST each; name, name.bak, odd, nothere,
        # many.txt: two; marked/ has a HEAD for its attributes
        assert d['list'] == 3 + 2 * 5 and d['get'] == 2 and d['head'] <= 1, d
        # asked again: the answers (found or not) are trusted for list_ttl
        r2 = m.requests()
        for n in ('top.txt', 'many', 'name', 'both'):
            os.stat(path(n))
        for absent in ('odd', 'nothere'):
            assert not os.path.exists(path(absent))
        assert sum(delta(m.requests(), r2).values()) == 0, delta(m.requests(), r2)
        assert sorted(os.listdir(path('many/d07')))[:2] == ['f000', 'f001']
        # the root listed now: the same entries, nothing fetched again
        assert sorted(os.listdir(m.mp)) == ['both', 'many', 'marked', 'name', 'name.bak',
                                            'odd.txt', 'top.txt']
        r3 = m.requests()
        for n in ('top.txt', 'name', 'name.bak'):
            assert open(path(n), 'rb').read() == items[n]
        d = delta(m.requests(), r3)
        assert d['get'] == 0 and d['head'] == 0 and d['list'] == 0, d
        assert open(path('both/inner'), 'rb').read() == b'inner'


def test_many_lookups_in_one_directory_list_it_instead(s3server, bucket, tmp_path):
    """Names looked up one by one (stat, no readdir): the first 32 in a
    directory are probes (two LISTs each), then the directory is listed
    (one page here) and the rest cost no LIST."""
    items = {'flat/f%03d' % i: b'%d' % i for i in range(60)}
    bulk_put(s3server, bucket, items)
    with Mount(s3server, bucket, tmp_path, opts={'list_ttl': 3600}) as m:
        assert os.path.isdir(os.path.join(m.mp, 'flat'))
        r0 = m.requests()
        for k, v in sorted(items.items()):
            assert os.stat(os.path.join(m.mp, k)).st_size == len(v), k
        d = delta(m.requests(), r0)
        # 32 probes, one listing of flat/; each file's attributes: one GET
        assert d['list'] == 2 * 32 + 1, d
        assert d['get'] == len(items) and d['head'] == 0, d
        assert sorted(os.listdir(os.path.join(m.mp, 'flat'))) == sorted(
            k.split('/')[1] for k in items)


def test_a_probed_name_changed_behind_the_back_is_seen_after_list_ttl(s3server, bucket,
                                                                      tmp_path):
    bulk_put(s3server, bucket, {'changing': b'version 1', 'going': b'bye', 'turning': b'file',
                                'stay': b'stay'})
    ttl = 3
    with Mount(s3server, bucket, tmp_path, opts={'list_ttl': ttl}) as m:
        path = lambda n: os.path.join(m.mp, n)   # noqa: E731
        t0 = time.monotonic()
        assert open(path('changing'), 'rb').read() == b'version 1'
        assert open(path('going'), 'rb').read() == b'bye'
        assert os.path.isfile(path('turning'))
        assert not os.path.exists(path('coming'))
        bulk_put(s3server, bucket, {'changing': b'version 2!', 'coming': b'hello',
                                    'turning/now a dir': b'd'})
        for key in ('going', 'turning'):
            status, _, body = s3server.request('DELETE', '/%s/%s' % (bucket, key))
            assert status in (200, 204), (status, body[:300])
        if time.monotonic() - t0 < ttl - 0.5:
            # within list_ttl: the earlier answers
            assert not os.path.exists(path('coming'))
            assert os.path.isfile(path('turning'))
        time.sleep(max(0, ttl - (time.monotonic() - t0)) + 1)
        assert open(path('changing'), 'rb').read() == b'version 2!'
        assert not os.path.exists(path('going'))
        assert open(path('coming'), 'rb').read() == b'hello'
        assert os.path.isdir(path('turning'))
        assert os.listdir(path('turning')) == ['now a dir']
        assert sorted(os.listdir(m.mp)) == ['changing', 'coming', 'stay', 'turning']


def test_changes_behind_the_back_appear_after_list_ttl(s3server, bucket, tmp_path):
    bulk_put(s3server, bucket, {'keep': b'keep', 'modify': b'old contents',
                                'delete': b'bye', 'sub/x': b'x'})
    ttl = 4
    with Mount(s3server, bucket, tmp_path, opts={'list_ttl': ttl}) as m:
        path = lambda n: os.path.join(m.mp, n)   # noqa: E731
        assert sorted(os.listdir(m.mp)) == ['delete', 'keep', 'modify', 'sub']
        assert open(path('modify'), 'rb').read() == b'old contents'
        t_listed = time.monotonic()
        bulk_put(s3server, bucket, {'new': b'new', 'modify': b'NEW CONTENTS!'})
        # a signed DELETE, not aws-cli: its start-up alone can take longer
        # than list_ttl on a loaded machine
        status, _, body = s3server.request('DELETE', '/%s/delete' % bucket)
        assert status in (200, 204), (status, body[:300])
        # before list_ttl: the old view
        assert sorted(os.listdir(m.mp)) == ['delete', 'keep', 'modify', 'sub']
        assert open(path('modify'), 'rb').read() == b'old contents'
        time.sleep(max(0, ttl - (time.monotonic() - t_listed)) + 1.5)
        assert sorted(os.listdir(m.mp)) == ['keep', 'modify', 'new', 'sub']
        assert open(path('modify'), 'rb').read() == b'NEW CONTENTS!'
        assert open(path('new'), 'rb').read() == b'new'
        assert not os.path.exists(path('delete'))


def du_bytes(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def test_cache_size_is_a_hard_cap(s3server, bucket, tmp_path):
    blobs = {'f%d.bin' % i: os.urandom(8 << 20) for i in range(8)}   # 64 MiB
    bulk_put(s3server, bucket, blobs, workers=4)
    cap = 8 << 20
    with Mount(s3server, bucket, tmp_path, opts={'cache_size': '8M'}) as m:
        content = [d for d in os.listdir(m.cache_dir)]
        assert len(content) == 1
        data_dir = os.path.join(m.cache_dir, content[0], 'content', 'objects')
        peak = 0
        for name, data in sorted(blobs.items()):
            h = hashlib.sha256()
            with open(os.path.join(m.mp, name), 'rb') as f:
                while True:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    h.update(chunk)
                    peak = max(peak, du_bytes(data_dir))
            assert h.digest() == hashlib.sha256(data).digest(), name
        print('peak cache content: %d bytes (cap %d)' % (peak, cap))
        assert peak <= cap
        assert m.stats()['cache_bytes'] <= cap


def patterned(n_mib):
    """n_mib MiB whose every MiB differs (a block served at the wrong offset
    shows)."""
    chunk = os.urandom(1 << 20)
    return b''.join(chunk[:-8] + i.to_bytes(8, 'little') for i in range(n_mib))


def test_cold_sequential_read_fetches_in_few_requests(s3server, bucket, tmp_path):
    """Read-ahead fetches runs of missing blocks with one ranged GET each:
    the first read's blocks on demand (the kernel's 1 MiB reads may span two
    blocks), then runs as the window grows 4, 8, 16, 32, 64 blocks with at
    most 16 MiB (16 blocks) per request: 2 + 4, 4, 8, 16, 16, 16 blocks for
    64 MiB is 8 requests (one GET per block would be 64); the bound allows a
    few more for reads the kernel sends out of order."""
    data = patterned(64)
    bulk_put(s3server, bucket, {'big': data}, workers=1)
    with Mount(s3server, bucket, tmp_path) as m:
        path = os.path.join(m.mp, 'big')
        assert os.stat(path).st_size == len(data)
        # the daemon (root) raised the mount's kernel read-ahead to 1 MiB
        dev = os.stat(m.mp).st_dev
        with open('/sys/class/bdi/%d:%d/read_ahead_kb' % (os.major(dev), os.minor(dev))) as f:
            assert int(f.read()) == 1024
        before = m.stats()
        h = hashlib.sha256()
        with open(path, 'rb') as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                h.update(b)
        after = m.stats()
        assert h.digest() == hashlib.sha256(data).digest()
        gets = after['requests_get'] - before['requests_get']
        down = after['bytes_down'] - before['bytes_down']
        print('64 MiB cold sequential read: %d GETs, %d bytes down' % (gets, down))
        assert gets <= 12
        assert down == len(data)           # each byte once
        assert after['cache_prefetch_blocks'] >= 60


def test_random_reads_fetch_only_the_blocks_they_touch(s3server, bucket, tmp_path):
    """4 KiB reads at random offsets fetch the 1 MiB block around each read
    and nothing ahead of it (kernel read-ahead off with POSIX_FADV_RANDOM, as
    random readers do); a rare pair of reads that look sequential may start
    one read-ahead of 4 blocks, allowed for."""
    data = patterned(64)
    bulk_put(s3server, bucket, {'rnd': data}, workers=1)
    rng = random.Random(6)
    offsets = [rng.randrange(0, len(data) - 4096) for _ in range(40)]
    blocks = {b for off in offsets for b in (off >> 20, (off + 4095) >> 20)}
    with Mount(s3server, bucket, tmp_path) as m:
        path = os.path.join(m.mp, 'rnd')
        assert os.stat(path).st_size == len(data)
        before = m.stats()
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            for off in offsets:
                assert os.pread(fd, 4096, off) == data[off:off + 4096], off
        finally:
            os.close(fd)
        after = m.stats()
        gets = after['requests_get'] - before['requests_get']
        down = after['bytes_down'] - before['bytes_down']
        print('%d random 4 KiB reads over %d blocks: %d GETs, %d bytes down' % (
            len(offsets), len(blocks), gets, down))
        assert gets <= len(blocks) + 1
        assert down <= (len(blocks) + 4) << 20
        assert down < len(data) * 3 // 4   # far from reading it all


def test_one_gib_sequential_read_throughput(s3rver, tmp_path):
    """Throughput is logged, not asserted (tests/bench measures)."""
    bucket = s3rver.new_bucket()
    big = tmp_path / 'big'
    with open(big, 'wb') as f:
        chunk = os.urandom(1 << 20)
        for i in range(1024):
            f.write(chunk[:-8] + i.to_bytes(8, 'little'))
    want = hashlib.sha256(big.read_bytes()).hexdigest()
    s3rver.aws('s3', 'cp', '--quiet', str(big), 's3://%s/big' % bucket)
    big.unlink()
    with Mount(s3rver, bucket, tmp_path, opts={'cache_size': '2G'}) as m:
        for label in ('cold', 'warm'):
            subprocess.run(['sh', '-c', 'echo 1 > /proc/sys/vm/drop_caches'], check=False)
            h = hashlib.sha256()
            t0 = time.monotonic()
            with open(os.path.join(m.mp, 'big'), 'rb') as f:
                while True:
                    b = f.read(1 << 20)
                    if not b:
                        break
                    h.update(b)
            dt = time.monotonic() - t0
            print('1 GiB sequential read, %s: %.2f s, %.0f MiB/s' % (label, dt, 1024 / dt))
            assert h.hexdigest() == want
