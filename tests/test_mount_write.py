"""Read-write mounts (issue 4): a scripted sequence of mixed operations applied
to the mount and to a local reference directory leaves identical trees (and
the same return values and errnos on the way), in the mount, after a remount
with a cold cache, and in what aws-cli sees of the bucket; `ls -l` after a
write costs no request; `ro` gives EROFS; write throughput is logged.
"""

import errno
import hashlib
import math
import os
import random
import stat
import subprocess
import time


from mount import Mount
from refcheck import (check_bucket_against, compare, errno_of, list_objects,
                      object_sha256, snapshot, tree)

MiB = 1 << 20

# paths whose mtime the script sets with utime (compared to the second);
# others with a slack covering the time both sides took to run the script
EXACT_MTIME = {'d3/renamed.txt', 'sparse.bin', 'd2', 'link1', 'big.bin'}


def scripted(root, mount_side):
    """The scripted sequence; returns what each step returned (value or
    errno), to compare between the two sides."""
    rnd = random.Random(4)
    res = []

    def P(*a):
        return os.path.join(root, *a)

    def step(name, fn, *a, **kw):
        r, e = errno_of(fn, *a, **kw)
        if isinstance(r, os.stat_result):
            r = (stat.S_IFMT(r.st_mode), r.st_size)
        if isinstance(r, bytes) and len(r) > 64:
            r = hashlib.sha256(r).hexdigest()
        res.append((name, r, errno.errorcode.get(e, e) if e else 0))
        return r

    def write_file(rel, data, mode=0o644, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
        fd = os.open(P(rel), flags, mode)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view[:4 * MiB])
                view = view[n:]
        finally:
            os.close(fd)

    def pwrite_at(rel, off, data):
        fd = os.open(P(rel), os.O_RDWR)
        try:
            return os.pwrite(fd, data, off)
        finally:
            os.close(fd)

    # directories
    step('mkdir d1', os.mkdir, P('d1'), 0o755)
    step('mkdir d1/sub', os.mkdir, P('d1', 'sub'), 0o750)
    step('mkdir d2', os.mkdir, P('d2'), 0o700)
    step('mkdir empty', os.mkdir, P('empty'), 0o755)
    step('mkdir d1 again', os.mkdir, P('d1'), 0o755)
    # create, write at offsets (a hole past EOF), append
    step('create a.txt', write_file, 'a.txt', b'hello world\n' * 1000)
    step('pwrite a.txt 5', pwrite_at, 'a.txt', 5, b'XYZ')
    step('pwrite a.txt past EOF', pwrite_at, 'a.txt', 20000, b'tail')
    step('stat a.txt', os.stat, P('a.txt'))
    fd = os.open(P('a.txt'), os.O_WRONLY | os.O_APPEND)
    step('append 1', os.write, fd, b'appended\n')
    step('append 2', os.write, fd, b'appended again\n')
    os.close(fd)
    step('read a.txt', lambda: open(P('a.txt'), 'rb').read())
    step('excl a.txt', os.open, P('a.txt'), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    # O_TRUNC of a larger file
    step('create b.bin', write_file, 'b.bin', rnd.randbytes(300 * 1024))
    step('O_TRUNC b.bin', write_file, 'b.bin', b'short', 0o644, os.O_WRONLY | os.O_TRUNC)
    step('read b.bin', lambda: open(P('b.bin'), 'rb').read())
    # truncate grow (a hole), shrink; ftruncate then write in the middle
    step('create c.bin', write_file, 'c.bin', rnd.randbytes(1000), 0o640)
    step('truncate c.bin grow', os.truncate, P('c.bin'), MiB)
    step('stat c.bin', os.stat, P('c.bin'))
    step('truncate c.bin shrink', os.truncate, P('c.bin'), 10)
    step('read c.bin', lambda: open(P('c.bin'), 'rb').read())
    step('create e.bin', write_file, 'e.bin', rnd.randbytes(5000))
    fd = os.open(P('e.bin'), os.O_RDWR)
    step('ftruncate e.bin grow', os.ftruncate, fd, 200000)
    step('pwrite e.bin middle', os.pwrite, fd, b'middle', 100000)
    step('ftruncate e.bin shrink', os.ftruncate, fd, 150000)
    step('pread e.bin', os.pread, fd, 200000, 0)
    os.close(fd)
    # a sparse file
    step('create sparse.bin', write_file, 'sparse.bin', b'')
    step('sparse end', pwrite_at, 'sparse.bin', 3 * MiB + 17, b'end')
    step('sparse start', pwrite_at, 'sparse.bin', 0, b'start')
    # a multipart-sized file (multipart_size=5 on the mount), then a small edit
    big = rnd.randbytes(12 * MiB + 12345)
    step('create big.bin', write_file, 'big.bin', big)
    step('edit big.bin', pwrite_at, 'big.bin', 6 * MiB + 3, b'EDITED')
    step('read big.bin', lambda: open(P('big.bin'), 'rb').read())
    # rmdir
    step('rmdir d1 (not empty)', os.rmdir, P('d1'))
    step('rmdir empty', os.rmdir, P('empty'))
    step('rmdir missing', os.rmdir, P('empty'))
    step('rmdir a file', os.rmdir, P('a.txt'))
    step('unlink a dir', os.unlink, P('d1'))
    # rename: file into a dir, file over an existing one, dir with contents
    step('create deep.txt', write_file, 'd1/sub/deep.txt', b'deep\n' * 100, 0o600)
    step('rename a.txt', os.rename, P('a.txt'), P('d1', 'a.txt'))
    step('rename b.bin over c.bin', os.rename, P('b.bin'), P('c.bin'))
    step('read c.bin after rename', lambda: open(P('c.bin'), 'rb').read())
    step('stat b.bin gone', os.stat, P('b.bin'))
    step('rename d1 -> d3', os.rename, P('d1'), P('d3'))
    step('listdir d3', lambda: sorted(os.listdir(P('d3'))))
    step('listdir d3/sub', lambda: sorted(os.listdir(P('d3', 'sub'))))
    step('stat d1 gone', os.stat, P('d1'))
    step('rename dir over non-empty dir', os.rename, P('d2'), P('d3'))
    step('rename dir into itself', os.rename, P('d3'), P('d3', 'sub', 'x'))
    step('rename file over dir', os.rename, P('c.bin'), P('d3'))
    # chmod, chown (root)
    step('chmod a.txt', os.chmod, P('d3', 'a.txt'), 0o600)
    step('chmod d2', os.chmod, P('d2'), 0o711)
    step('chmod e.bin +x', os.chmod, P('e.bin'), 0o755)
    step('chown a.txt', os.chown, P('d3', 'a.txt'), 1234, 5678)
    step('chown d2', os.chown, P('d2'), 42, 43)
    step('chown e.bin group', os.chown, P('e.bin'), -1, 99)
    # symlinks
    step('symlink link1', os.symlink, 'd3/a.txt', P('link1'))
    step('symlink dangling', os.symlink, '../nowhere/x y', P('d3', 'dangling'))
    step('readlink link1', os.readlink, P('link1'))
    step('readlink dangling', os.readlink, P('d3', 'dangling'))
    step('read through link1', lambda: open(P('link1'), 'rb').read())
    step('symlink exists', os.symlink, 'x', P('link1'))
    # xattrs
    step('setxattr color', os.setxattr, P('d3', 'a.txt'), 'user.color', b'blue')
    step('setxattr bin', os.setxattr, P('d3', 'a.txt'), 'user.bin', b'\x00\xff\x01 "x",}')
    step('setxattr tmp', os.setxattr, P('d3', 'a.txt'), 'user.tmp', b'gone soon')
    step('setxattr create exists', os.setxattr, P('d3', 'a.txt'), 'user.tmp', b'x',
         os.XATTR_CREATE)
    step('setxattr replace missing', os.setxattr, P('d3', 'a.txt'), 'user.none', b'x',
         os.XATTR_REPLACE)
    step('setxattr dir', os.setxattr, P('d2'), 'user.dir', b'on a directory')
    step('removexattr tmp', os.removexattr, P('d3', 'a.txt'), 'user.tmp')
    step('removexattr missing', os.removexattr, P('d3', 'a.txt'), 'user.tmp')
    step('getxattr color', os.getxattr, P('d3', 'a.txt'), 'user.color')
    step('getxattr missing', os.getxattr, P('d3', 'a.txt'), 'user.nope')
    step('listxattr', lambda: sorted(n for n in os.listxattr(P('d3', 'a.txt'))
                                     if n.startswith('user.')))
    # an open file unlinked stays readable and writable until closed
    fd = os.open(P('open-unlinked'), os.O_RDWR | os.O_CREAT, 0o644)
    step('write before unlink', os.write, fd, b'before unlink\n')
    step('unlink open file', os.unlink, P('open-unlinked'))
    step('stat unlinked', os.stat, P('open-unlinked'))
    step('pwrite after unlink', os.pwrite, fd, b'after', 100)
    step('pread after unlink', os.pread, fd, 200, 0)
    step('fstat after unlink', lambda: os.fstat(fd).st_size)
    step('close unlinked', os.close, fd)
    step('listdir root has no open-unlinked',
         lambda: 'open-unlinked' in os.listdir(root))
    # mknod of a regular file
    step('mknod', os.mknod, P('node'), stat.S_IFREG | 0o640)
    step('stat node', os.stat, P('node'))
    step('rename node -> d2/node', os.rename, P('node'), P('d2', 'node'))
    # hard links are refused on the mount
    if mount_side:
        r, e = errno_of(os.link, P('e.bin'), P('hard'))
        assert e in (errno.EPERM, errno.ENOTSUP), 'link(): %r errno %s' % (r, e)
        assert not os.path.exists(P('hard'))
    # utimens with nanoseconds, then a rename keeps metadata
    step('utime a.txt', os.utime, P('d3', 'a.txt'),
         ns=(1500000000123456789, 1600000000987654321))
    step('rename a.txt -> renamed.txt', os.rename, P('d3', 'a.txt'), P('d3', 'renamed.txt'))
    step('utime sparse', os.utime, P('sparse.bin'), ns=(1400000000000000000, 1400000001500000000))
    step('utime big', os.utime, P('big.bin'), (1300000000, 1300000002))
    step('utime link1 (no follow)', os.utime, P('link1'), ns=(1200000000, 1200000003000000000),
         follow_symlinks=False)
    step('utime d2', os.utime, P('d2'), ns=(1100000000000000000, 1100000004000000000))
    step('stat renamed.txt', lambda: os.stat(P('d3', 'renamed.txt')).st_mtime_ns // 10**9)
    return res


def test_scripted_operations_match_a_local_directory(s3server, bucket, tmp_path):
    ref = tmp_path / 'ref'
    ref.mkdir()
    m = Mount(s3server, bucket, tmp_path, opts={'multipart_size': 5})
    with m:
        t0 = time.monotonic()
        got_steps = scripted(m.mp, True)
        want_steps = scripted(str(ref), False)
        # The two sides run one after the other: an mtime not set by utime
        # lies anywhere in that time on either side.
        slack = max(2, math.ceil(time.monotonic() - t0) + 1)
        diff = ['%s: mount %r %s, reference %r %s' % (a[0], a[1], a[2], b[1], b[2])
                for a, b in zip(got_steps, want_steps) if a != b]
        assert not diff, '\n'.join(diff)
        want = snapshot(str(ref))
        problems = compare(snapshot(m.mp), want, exact_mtime=EXACT_MTIME, slack=slack)
        assert not problems, 'mount vs reference:\n' + '\n'.join(problems)
        m.unmount(timeout=120)
        # the bucket as aws-cli sees it (after unmount: nothing is pending)
        problems = check_bucket_against(s3server, bucket, want, exact_mtime=EXACT_MTIME,
                                        slack=slack)
        assert not problems, 'bucket vs reference:\n' + '\n'.join(problems)
        # a remount with a cold cache and index: attributes come from S3
        m.cache_dir = m.opts['cache_dir'] = str(tmp_path / 'cache2')
        m.mount()
        problems = compare(snapshot(m.mp), want, exact_mtime=EXACT_MTIME, slack=slack)
        assert not problems, 'remount (cold) vs reference:\n' + '\n'.join(problems)
        # and the warm one (same cache_dir as before) agrees too
        m.unmount()
        m.cache_dir = m.opts['cache_dir'] = str(tmp_path / 'cache')
        m.mount()
        problems = compare(snapshot(m.mp), want, exact_mtime=EXACT_MTIME, slack=slack)
        assert not problems, 'remount (warm) vs reference:\n' + '\n'.join(problems)


def req_delta(after, before):
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def test_ls_after_write_is_right_and_free(s3server, bucket, tmp_path):
    with Mount(s3server, bucket, tmp_path) as m:
        os.mkdir(os.path.join(m.mp, 'dir'))
        p = os.path.join(m.mp, 'dir', 'f')
        with open(p, 'wb') as f:
            f.write(b'x' * 1000)
        os.listdir(os.path.join(m.mp, 'dir'))
        time.sleep(1.1)
        t_write = time.time()
        with open(p, 'ab') as f:
            f.write(b'y' * 2345)
        with open(os.path.join(m.mp, 'dir', 'new'), 'wb') as f:
            f.write(b'z' * 77)
        s0 = m.requests()
        out = subprocess.run(['ls', '-l', '--time-style=+%s', os.path.join(m.mp, 'dir')],
                             capture_output=True, text=True, check=True).stdout
        st = os.stat(p)
        s1 = m.requests()
        print(out)
        rows = {line.split()[-1]: line.split() for line in out.splitlines()[1:]}
        assert rows['f'][4] == '3345' and rows['new'][4] == '77', out
        assert abs(int(rows['f'][5]) - t_write) <= 2, out
        assert st.st_size == 3345 and abs(st.st_mtime - t_write) <= 2
        d = req_delta(s1, s0)
        # uploads of the two files may complete meanwhile; nothing else
        reads = {k: v for k, v in d.items() if k in ('list', 'head', 'get', 'other')}
        assert not reads, 'ls -l after a write made requests: %s' % d


def test_ro_option_gives_erofs(s3server, bucket, tmp_path):
    s3server.request('PUT', '/%s/existing' % bucket, body=b'data')
    s3server.request('PUT', '/%s/dir/' % bucket, body=b'')
    with Mount(s3server, bucket, tmp_path, opts={'ro': None}) as m:
        P = lambda *a: os.path.join(m.mp, *a)   # noqa: E731
        attempts = {
            'create': lambda: os.open(P('new'), os.O_WRONLY | os.O_CREAT, 0o644),
            'open for write': lambda: os.open(P('existing'), os.O_WRONLY),
            'truncate': lambda: os.truncate(P('existing'), 0),
            'unlink': lambda: os.unlink(P('existing')),
            'mkdir': lambda: os.mkdir(P('newdir')),
            'rmdir': lambda: os.rmdir(P('dir')),
            'rename': lambda: os.rename(P('existing'), P('moved')),
            'chmod': lambda: os.chmod(P('existing'), 0o600),
            'chown': lambda: os.chown(P('existing'), 1, 1),
            'utime': lambda: os.utime(P('existing'), (1, 1)),
            'symlink': lambda: os.symlink('x', P('ln')),
            'setxattr': lambda: os.setxattr(P('existing'), 'user.a', b'1'),
            'mknod': lambda: os.mknod(P('node'), stat.S_IFREG | 0o644),
        }
        for name, fn in attempts.items():
            r, e = errno_of(fn)
            assert e == errno.EROFS, '%s on a ro mount: %r errno %s' % (name, r, e)
        assert open(P('existing'), 'rb').read() == b'data'
    assert sorted(list_objects(s3server, bucket)) == ['dir/', 'existing']


def test_one_gib_sequential_write_throughput(s3server, bucket, tmp_path):
    """Throughput is printed, not asserted; the object is verified."""
    n_mib = 1024 if s3server.kind == 's3rver' else 256
    with Mount(s3server, bucket, tmp_path, opts={'cache_size': '2G'}) as m:
        chunk = os.urandom(MiB)
        h = hashlib.sha256()
        p = os.path.join(m.mp, 'big')
        t0 = time.monotonic()
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for i in range(n_mib):
            b = chunk[:-8] + i.to_bytes(8, 'little')
            h.update(b)
            assert os.write(fd, b) == MiB
        t_write = time.monotonic() - t0
        os.close(fd)
        t_close = time.monotonic() - t0
        assert os.stat(p).st_size == n_mib * MiB
        m.unmount(timeout=600)
        t_all = time.monotonic() - t0
        print('%d MiB sequential write on %s: write() %.1f s (%.0f MiB/s), through close '
              '%.1f s (%.0f MiB/s), through unmount %.1f s (%.0f MiB/s)' % (
                  n_mib, s3server.kind, t_write, n_mib / t_write, t_close, n_mib / t_close,
                  t_all, n_mib / t_all))
        sha, size = object_sha256(s3server, bucket, 'big')
        assert size == n_mib * MiB
        assert sha == h.hexdigest()


def test_cp_r_of_small_files_throughput(s3server, bucket, tmp_path):
    n = 1000 if s3server.kind == 's3rver' else 200
    rnd = random.Random(1000)
    src = tmp_path / 'src'
    total = 0
    for i in range(n):
        p = src / ('d%02d' % (i % 20)) / ('f%04d.bin' % i)
        p.parent.mkdir(parents=True, exist_ok=True)
        data = rnd.randbytes(rnd.randint(1024, 64 * 1024))
        total += len(data)
        p.write_bytes(data)
    want = tree(str(src))
    with Mount(s3server, bucket, tmp_path) as m:
        t0 = time.monotonic()
        subprocess.run(['cp', '-r', str(src), os.path.join(m.mp, 'dst')], check=True)
        t_cp = time.monotonic() - t0
        m.unmount(timeout=600)
        t_all = time.monotonic() - t0
        print('cp -r of %d files (%.1f MiB) on %s: cp %.1f s (%.0f files/s), through unmount '
              '%.1f s (%.0f files/s, %.1f MiB/s)' % (n, total / MiB, s3server.kind, t_cp,
                                                    n / t_cp, t_all, n / t_all,
                                                    total / MiB / t_all))
        keys = list_objects(s3server, bucket, 'dst/')
        files = {k: v for k, v in keys.items() if not k.endswith('/')}
        assert len(files) == n
        assert sum(files.values()) == total
        m.cache_dir = m.opts['cache_dir'] = str(tmp_path / 'cache2')
        m.mount()
        assert tree(os.path.join(m.mp, 'dst')) == want
