"""The memcheck subset (issue 7): a small workload that touches each main path
of the daemon once - mount, list, read of objects uploaded by others (cold
and cached), writes of small, multi-block and multipart files, rename,
unlink, mkdir/rmdir, symlink, xattrs, truncate, remount - on s3rver.

CI runs it with BUCKETFS_VALGRIND=1 and the plain build (tools/test.sh):
each mount's daemon runs under valgrind memcheck and its unmount fails on
any memcheck error or definite/indirect leak (tests/mount.py).  In the main
suite it runs with the ASan+UBSan build like every other test.
"""

import os
import random

from mount import Mount, bulk_put
from refcheck import object_bytes

KiB = 1 << 10
MiB = 1 << 20


def test_memcheck_subset(s3rver, tmp_path):
    bucket = s3rver.new_bucket()
    r = random.Random(5)
    theirs = {'a.txt': b'hello\n', 'dir/b.bin': r.randbytes(1 * MiB + 333),
              'dir/sub/c.bin': r.randbytes(10 * KiB)}
    bulk_put(s3rver, bucket, theirs)
    mine = {'small': b'x' * 100, 'blocks.bin': r.randbytes(2 * MiB + 77),
            'multi.bin': r.randbytes(6 * MiB + 5)}
    m = Mount(s3rver, bucket, tmp_path, opts={'multipart_size': 5})
    with m:
        mp = m.mp
        assert sorted(os.listdir(mp)) == ['a.txt', 'dir']
        assert sorted(os.listdir(os.path.join(mp, 'dir'))) == ['b.bin', 'sub']
        for k, data in theirs.items():
            p = os.path.join(mp, k)
            assert os.stat(p).st_size == len(data)
            assert open(p, 'rb').read() == data  # cold: from the server
            assert open(p, 'rb').read() == data  # cached
        with open(os.path.join(mp, 'dir', 'b.bin'), 'rb') as f:
            f.seek(MiB - 10)
            assert f.read(20) == theirs['dir/b.bin'][MiB - 10:MiB + 10]

        os.mkdir(os.path.join(mp, 'new'))
        for k, data in mine.items():
            with open(os.path.join(mp, 'new', k), 'wb') as f:
                f.write(data)
        with open(os.path.join(mp, 'new', 'small'), 'ab') as f:
            f.write(b'yz')
        mine['small'] += b'yz'
        os.rename(os.path.join(mp, 'new', 'blocks.bin'), os.path.join(mp, 'new', 'moved.bin'))
        mine['moved.bin'] = mine.pop('blocks.bin')
        os.truncate(os.path.join(mp, 'a.txt'), 3)
        os.symlink('new/small', os.path.join(mp, 'ln'))
        os.setxattr(os.path.join(mp, 'new', 'small'), 'user.k', b'v')
        os.mkdir(os.path.join(mp, 'gone'))
        os.rmdir(os.path.join(mp, 'gone'))
        os.unlink(os.path.join(mp, 'dir', 'sub', 'c.bin'))
        assert sorted(os.listdir(os.path.join(mp, 'new'))) == sorted(mine)
        for k, data in mine.items():
            assert open(os.path.join(mp, 'new', k), 'rb').read() == data

        m.remount()  # a second daemon: the index and cache of the first
        assert sorted(os.listdir(mp)) == ['a.txt', 'dir', 'ln', 'new']
        assert open(os.path.join(mp, 'a.txt'), 'rb').read() == b'hel'
        assert os.readlink(os.path.join(mp, 'ln')) == 'new/small'
        assert os.getxattr(os.path.join(mp, 'new', 'small'), 'user.k') == b'v'
        assert not os.path.exists(os.path.join(mp, 'dir', 'sub', 'c.bin'))
        for k, data in mine.items():
            assert open(os.path.join(mp, 'new', k), 'rb').read() == data
    for k, data in mine.items():
        assert object_bytes(s3rver, bucket, 'new/' + k) == data
