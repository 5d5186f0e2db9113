"""Interoperability with s3fs-fuse (issue 4): files, directories, symlinks,
chmod / chown / utimens and user.* xattrs written through bucketfs read back
with the same attributes through s3fs (Debian's package) mounted on the same
bucket, and the other way round.  Each side's view is compared with a local
reference directory to which the same operations were applied.

s3fs takes the credentials from a 0600 passwd file (ACCESS:SECRET) on
s3rver; Swift's access key (test:tester) holds a colon, which a passwd file
cannot, so there s3fs gets AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, which
s3fs 1.90 honours.
"""

import os
import shutil
import subprocess
import time

import pytest

from mount import Mount
from refcheck import compare, snapshot

S3FS = shutil.which('s3fs')
pytestmark = pytest.mark.skipif(S3FS is None, reason='s3fs not installed')

# written with utime at the end: compared to the second, directories too
EXACT = {'docs', 'docs/readme.txt', 'docs/deep', 'docs/deep/notes.md', 'bin.dat',
         'link-to-readme', 'private', 'private/secret', 'empty-dir'}


class S3fsMount:
    def __init__(self, server, bucket, workdir):
        self.server, self.bucket = server, bucket
        self.workdir = str(workdir)
        self.mp = os.path.join(self.workdir, 's3fs-mnt')
        self.log = os.path.join(self.workdir, 's3fs.log')
        self.proc = None
        os.makedirs(self.mp, exist_ok=True)

    def mount(self, timeout=30):
        opts = ['url=' + self.server.endpoint, 'use_path_request_style', 'dbglevel=warn',
                'use_xattr', 'stat_cache_expire=1']
        env = self.server.client_env()
        if ':' not in self.server.access_key:
            pw = os.path.join(self.workdir, 's3fs-passwd')
            with open(pw, 'w') as f:
                f.write('%s:%s\n' % (self.server.access_key, self.server.secret_key))
            os.chmod(pw, 0o600)
            opts.append('passwd_file=' + pw)
            del env['AWS_ACCESS_KEY_ID'], env['AWS_SECRET_ACCESS_KEY']
        self.proc = subprocess.Popen([S3FS, self.bucket, self.mp, '-f', '-o', ','.join(opts)],
                                     env=env, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, 'a'))
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mp):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError('s3fs did not mount:\n' + open(self.log).read()[-5000:])
            time.sleep(0.05)
        # s3fs answers its first requests only once it checked the bucket
        os.listdir(self.mp)
        return self

    def unmount(self):
        if self.proc is None:
            return
        subprocess.run(['fusermount3', '-u', self.mp], check=True)
        rc = self.proc.wait(timeout=120)
        self.proc = None
        assert rc == 0, 's3fs exited %d:\n%s' % (rc, open(self.log).read()[-5000:])

    def __enter__(self):
        return self.mount()

    def __exit__(self, exc_type, *a):
        if self.proc is not None:
            if exc_type is not None:
                subprocess.run(['fusermount3', '-u', '-z', self.mp])
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                self.proc = None
                print('s3fs log:\n' + open(self.log).read()[-5000:])
            else:
                self.unmount()


def populate(root, with_xattrs=True):
    """The same operations on either side."""
    P = lambda *a: os.path.join(root, *a)   # noqa: E731
    os.mkdir(P('docs'), 0o755)
    os.mkdir(P('docs', 'deep'), 0o750)
    os.mkdir(P('private'), 0o700)
    os.mkdir(P('empty-dir'), 0o755)
    with open(P('docs', 'readme.txt'), 'wb') as f:
        f.write(b'read me\n' * 100)
    with open(P('docs', 'deep', 'notes.md'), 'wb') as f:
        f.write(b'# notes\n')
    with open(P('bin.dat'), 'wb') as f:
        f.write(bytes(range(256)) * 4000)
    with open(P('private', 'secret'), 'wb') as f:
        f.write(b'secret\n')
    with open(P('written-now'), 'wb') as f:
        f.write(b'mtime from the write itself\n')
    os.symlink('docs/readme.txt', P('link-to-readme'))
    os.symlink('../elsewhere/not there', P('docs', 'dangling'))
    os.chmod(P('bin.dat'), 0o751)
    os.chmod(P('private', 'secret'), 0o400)
    os.chmod(P('private'), 0o711)
    os.chown(P('private', 'secret'), 1234, 5678)
    os.chown(P('private'), 1234, 5678)
    os.chown(P('docs', 'deep', 'notes.md'), 0, 100)
    if with_xattrs:
        os.setxattr(P('docs', 'readme.txt'), 'user.color', b'green')
        os.setxattr(P('docs', 'readme.txt'), 'user.bin', b'\x00\x01\xfe"{}')
        os.setxattr(P('docs'), 'user.on-dir', b'yes')
    # mtimes last, deepest first, so that no later change touches them
    for i, rel in enumerate(['docs/deep/notes.md', 'docs/deep', 'docs/readme.txt', 'docs',
                             'bin.dat', 'private/secret', 'private', 'empty-dir']):
        os.utime(P(rel), (1500000000 + i, 1600000000 + 1000 * i))
    os.utime(P('link-to-readme'), (1400000000, 1400000007), follow_symlinks=False)


def check(label, got, want):
    problems = compare(got, want, exact_mtime=EXACT, slack=5, label=(label, 'reference'))
    assert not problems, '%s vs reference:\n%s' % (label, '\n'.join(problems))


def test_written_by_bucketfs_read_by_s3fs(s3server, bucket, tmp_path):
    ref = tmp_path / 'ref'
    ref.mkdir()
    populate(str(ref))
    want = snapshot(str(ref))
    with Mount(s3server, bucket, tmp_path) as m:
        populate(m.mp)
        check('bucketfs', snapshot(m.mp), want)
    with S3fsMount(s3server, bucket, tmp_path) as s:
        got = snapshot(s.mp)
        check('s3fs', got, want)


def test_written_by_s3fs_read_by_bucketfs(s3server, bucket, tmp_path):
    ref = tmp_path / 'ref'
    ref.mkdir()
    populate(str(ref))
    want = snapshot(str(ref))
    with S3fsMount(s3server, bucket, tmp_path) as s:
        populate(s.mp)
        seen_by_s3fs = snapshot(s.mp)
    # what s3fs shows of its own writes is the yardstick for attributes it
    # cannot keep; report it, then hold bucketfs to the reference
    problems = compare(seen_by_s3fs, want, exact_mtime=EXACT, slack=5,
                       label=('s3fs', 'reference'))
    if problems:
        print('s3fs itself differs from the reference:\n' + '\n'.join(problems))
    with Mount(s3server, bucket, tmp_path) as m:
        got = snapshot(m.mp)
        problems = compare(got, seen_by_s3fs, exact_mtime=EXACT, slack=5,
                           label=('bucketfs', 's3fs'))
        assert not problems, 'bucketfs vs s3fs:\n' + '\n'.join(problems)
