"""A quick smoke test of the write path (issue 4): create, write, append,
truncate, rename, unlink, mkdir/rmdir, symlink, chmod/utimens, xattrs, all
checked through the mount, after a remount, and with aws-cli.  Runs on
s3rver only, in well under 30 s; the full suites are test_mount_write.py,
test_random_ops.py, test_write_crash.py and test_interop_s3fs.py.
"""

import errno
import json
import os
import stat

import pytest

from mount import Mount


def head(server, bucket, key):
    p = server.aws('s3api', 'head-object', '--bucket', bucket, '--key', key, '--output', 'json')
    return json.loads(p.stdout)


def test_write_smoke(s3rver, tmp_path):
    bucket = s3rver.new_bucket()
    with Mount(s3rver, bucket, tmp_path) as m:
        mp = m.mp
        p = os.path.join(mp, 'a.txt')
        with open(p, 'wb') as f:
            f.write(b'hello')
        assert os.stat(p).st_size == 5
        with open(p, 'ab') as f:
            f.write(b' world')
        with open(p, 'r+b') as f:
            f.seek(20)
            f.write(b'!')  # a hole
            os.fsync(f.fileno())
        assert open(p, 'rb').read() == b'hello world' + b'\0' * 9 + b'!'
        os.truncate(p, 5)
        assert open(p, 'rb').read() == b'hello'

        os.mkdir(os.path.join(mp, 'd'), 0o750)
        os.rename(p, os.path.join(mp, 'd', 'b.txt'))
        assert not os.path.exists(p)
        os.symlink('d/b.txt', os.path.join(mp, 'ln'))
        assert os.readlink(os.path.join(mp, 'ln')) == 'd/b.txt'
        b = os.path.join(mp, 'd', 'b.txt')
        os.chmod(b, 0o600)
        os.utime(b, (1600000000, 1600000000.5))
        os.setxattr(b, 'user.colour', b'blue\0green')
        with pytest.raises(OSError) as e:
            os.rmdir(os.path.join(mp, 'd'))
        assert e.value.errno == errno.ENOTEMPTY
        with pytest.raises(OSError) as e:
            os.link(b, os.path.join(mp, 'hard'))
        assert e.value.errno == errno.EPERM

        # an open, unlinked file stays usable and is never uploaded
        q = os.path.join(mp, 'gone')
        fd = os.open(q, os.O_CREAT | os.O_RDWR, 0o644)
        os.write(fd, b'temp')
        os.unlink(q)
        os.write(fd, b'orary')
        assert os.pread(fd, 100, 0) == b'temporary'
        os.close(fd)
        assert not os.path.exists(q)

        os.rename(os.path.join(mp, 'd'), os.path.join(mp, 'e'))
        m.remount()
        b = os.path.join(mp, 'e', 'b.txt')
        st = os.stat(b)
        assert open(b, 'rb').read() == b'hello'
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_mtime == 1600000000.5
        assert os.getxattr(b, 'user.colour') == b'blue\0green'
        assert stat.S_IMODE(os.stat(os.path.join(mp, 'e')).st_mode) == 0o750
        assert os.readlink(os.path.join(mp, 'ln')) == 'd/b.txt'
        assert sorted(os.listdir(mp)) == ['e', 'ln']

    h = head(s3rver, bucket, 'e/b.txt')
    meta = h['Metadata']
    assert int(meta['mode']) == stat.S_IFREG | 0o600
    assert float(meta['mtime']) == 1600000000.5
    assert 'xattr' in meta
    assert head(s3rver, bucket, 'e/')['Metadata']['mode'] == str(stat.S_IFDIR | 0o750)
    assert int(head(s3rver, bucket, 'ln')['Metadata']['mode']) == stat.S_IFLNK | 0o777
