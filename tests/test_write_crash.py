"""Durability of the write path (issue 4): nothing a caller was told is
written is lost.

- kill -9 of the daemon in the middle of uploading a 200 MiB file (closed,
  with close returning before the upload ends; or with close waiting for it)
  -> after a remount on the same cache_dir the object in the bucket is
  complete and correct (sha256 through aws-cli).  The upload is slowed by a
  fault proxy that holds every part's response for a while.
- A small file closed while the server is down, then kill -9: it reaches the
  bucket after the remount.
- The server "down" (a fault proxy dropping every request) during close of a
  file large enough to be uploaded at close: close returns EIO, the data is
  still readable through the mount, and it reaches the bucket once the server
  is back; fsync of a small file likewise returns EIO.

The mounts go through the proxy (url=proxy endpoint) for their whole life, so
the index and journal (one per endpoint + bucket) are the same on remount.
"""

import errno
import hashlib
import os
import subprocess
import sys
import time

import pytest

from mount import Mount
from refcheck import head_object, list_objects, object_sha256

MiB = 1 << 20

WRITER = r'''
import os, sys
path, chunk_file, n, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
chunk = open(chunk_file, 'rb').read()
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for i in range(n):
    b = chunk[:-8] + i.to_bytes(8, 'little')
    v = memoryview(b)
    while v:
        v = v[os.write(fd, v):]
print('written', flush=True)
if mode == 'fsync':
    os.fsync(fd)
    print('fsynced', flush=True)
os.close(fd)
print('closed', flush=True)
'''

# failing requests are logged at error level on purpose in these tests
EXPECTED_ERRORS = [r'(?i)upload', r'(?i)(reset|connect|recv|send|timed? ?out|'
                   r'Input/output|EIO|server|HTTP|network|transfer|retr)']


def pattern_sha(chunk, n):
    h = hashlib.sha256()
    for i in range(n):
        h.update(chunk[:-8] + i.to_bytes(8, 'little'))
    return h.hexdigest()


def wait_for_object(server, bucket, key, size, timeout):
    """Polls head-object (straight to the server) until key has size."""
    deadline = time.monotonic() + timeout
    h = None
    while time.monotonic() < deadline:
        h = head_object(server, bucket, key, check=False)
        if h and h.get('ContentLength') == size:
            return h
        time.sleep(1)
    raise AssertionError('%s did not reach the bucket with %d bytes within %ds (head: %r)' % (
        key, size, timeout, h))


def parts_done(proxy):
    return [e for e in proxy.log() if e['method'] == 'PUT' and 'partNumber=' in e['target']
            and e['status'] == 200]


def completes(proxy):
    return [e for e in proxy.log() if e['method'] == 'POST' and 'uploadId=' in e['target']]


def no_pending_multipart(server, bucket):
    p = server.aws('s3api', 'list-multipart-uploads', '--bucket', bucket, '--output', 'json',
                   check=False)
    if p.returncode != 0:
        return None   # not implemented by this server
    import json
    return json.loads(p.stdout or '{}').get('Uploads', [])


@pytest.mark.parametrize('mode', ['closed', 'close-waits'])
def test_kill9_during_upload_of_200mib_then_remount(s3rver, make_faultproxy, tmp_path, mode):
    server = s3rver
    bucket = server.new_bucket()
    proxy = make_faultproxy(server)
    n = 200
    chunk = os.urandom(MiB)
    (tmp_path / 'chunk').write_bytes(chunk)
    want = pattern_sha(chunk, n)
    opts = {'url': proxy.endpoint, 'multipart_size': 8, 'parallel_count': 2}
    if mode == 'closed':
        opts['async_close_max'] = '512M'   # close returns, the upload goes on
    m = Mount(server, bucket, tmp_path, opts=opts)
    m.expected_errors = EXPECTED_ERRORS
    with m:
        # every part's answer is held 1.5 s: 25 parts, 2 at a time
        proxy.configure(rate=1.0, kinds=['stall'], stall_seconds=1.5, methods=['PUT'],
                        path_regex='partNumber=')
        writer = subprocess.Popen([sys.executable, '-c', WRITER, os.path.join(m.mp, 'big'),
                                   str(tmp_path / 'chunk'), str(n), 'close'],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if mode == 'closed':
            out, err = writer.communicate(timeout=300)
            assert writer.returncode == 0 and 'closed' in out, (out, err)
        deadline = time.monotonic() + 300
        while len(parts_done(proxy)) < 4:
            assert time.monotonic() < deadline, 'no upload of parts seen: %r' % proxy.log()[-5:]
            time.sleep(0.1)
        done = len(parts_done(proxy))
        assert not completes(proxy), 'upload already completed before the kill'
        m.kill9()
        print('killed with %d of %d parts uploaded' % (done, n // 8 + (n % 8 > 0)))
        if mode != 'closed':
            try:
                out, err = writer.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                writer.kill()
                out, err = writer.communicate()
            print('writer (close waiting for the upload): rc %d %s %s' % (
                writer.returncode, out.strip(), err.strip()[-300:]))
        head = head_object(server, bucket, 'big', check=False)
        assert not head or head.get('ContentLength') != n * MiB, \
            'the object was complete before the kill: the test did not test anything'
        proxy.clear()
        t0 = time.monotonic()
        m.mount()
        # the pending upload is resumed: the object appears, complete
        wait_for_object(server, bucket, 'big', n * MiB, timeout=180)
        print('object complete %.1f s after the remount' % (time.monotonic() - t0))
        st = os.stat(os.path.join(m.mp, 'big'))
        assert st.st_size == n * MiB
        m.unmount(timeout=300)
    sha, size = object_sha256(server, bucket, 'big')
    assert size == n * MiB and sha == want
    pending = no_pending_multipart(server, bucket)
    assert not pending, 'multipart uploads left behind: %r' % pending


def test_small_file_closed_while_server_down_survives_kill9(s3server, make_faultproxy,
                                                            tmp_path):
    server = s3server
    bucket = server.new_bucket()
    proxy = make_faultproxy(server)
    data = os.urandom(300 * 1024)
    m = Mount(server, bucket, tmp_path, opts={'url': proxy.endpoint, 'retries': 1,
                                              'retry_max_seconds': 3, 'connect_timeout': 2})
    m.expected_errors = EXPECTED_ERRORS
    with m:
        p = os.path.join(m.mp, 'small.bin')
        fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o640)
        assert os.write(fd, data) == len(data)
        proxy.configure(rate=1.0, kinds=['drop'])
        r = None
        try:
            os.close(fd)
        except OSError as e:
            r = e.errno
        print('close of a small file with the server down: %s' % (
            errno.errorcode.get(r) if r else 'ok'))
        assert open(p, 'rb').read() == data
        time.sleep(2)   # let it try (and fail) in the background
        assert head_object(server, bucket, 'small.bin', check=False) is None
        m.kill9()
        proxy.clear()
        m.mount()
        wait_for_object(server, bucket, 'small.bin', len(data), timeout=90)
        assert open(p, 'rb').read() == data
        assert os.stat(p).st_mode & 0o7777 == 0o640
    sha, size = object_sha256(server, bucket, 'small.bin')
    assert sha == hashlib.sha256(data).hexdigest()


def test_server_down_during_close_gives_eio_and_data_is_kept(s3server, make_faultproxy,
                                                             tmp_path):
    server = s3server
    bucket = server.new_bucket()
    proxy = make_faultproxy(server)
    big = os.urandom(8 * MiB + 4321)      # above async_close_max (1M): uploaded at close
    small = os.urandom(100 * 1024)        # below: fsync waits for it
    m = Mount(server, bucket, tmp_path, opts={'url': proxy.endpoint, 'retries': 1,
                                              'retry_max_seconds': 3, 'connect_timeout': 2,
                                              'readwrite_timeout': 5, 'multipart_size': 5})
    m.expected_errors = EXPECTED_ERRORS
    with m:
        pb = os.path.join(m.mp, 'eio.bin')
        ps = os.path.join(m.mp, 'fsync.bin')
        fb = os.open(pb, os.O_WRONLY | os.O_CREAT, 0o644)
        fs = os.open(ps, os.O_WRONLY | os.O_CREAT, 0o600)
        v = memoryview(big)
        while v:
            v = v[os.write(fb, v):]
        assert os.write(fs, small) == len(small)
        # listed once while the server is up (the files were created after
        # lookups of their names alone): a directory never listed cannot be
        # shown while the server is down, only with an error
        assert sorted(os.listdir(m.mp)) == ['eio.bin', 'fsync.bin']
        proxy.configure(rate=1.0, kinds=['drop'])   # the server is "down"
        t0 = time.monotonic()
        with pytest.raises(OSError) as ei:
            os.close(fb)
        print('close failed after %.1f s: %s' % (time.monotonic() - t0, ei.value))
        assert ei.value.errno == errno.EIO
        with pytest.raises(OSError) as ei:
            os.fsync(fs)
        assert ei.value.errno == errno.EIO
        try:
            os.close(fs)
        except OSError as e:
            print('close after the failed fsync: %s' % e)
        # the data is still there, served from the staged copy
        assert os.stat(pb).st_size == len(big)
        assert open(pb, 'rb').read() == big
        assert open(ps, 'rb').read() == small
        assert sorted(os.listdir(m.mp)) == ['eio.bin', 'fsync.bin']
        assert not list_objects(server, bucket)
        # the server is back: both reach the bucket by themselves
        proxy.clear()
        t0 = time.monotonic()
        wait_for_object(server, bucket, 'eio.bin', len(big), timeout=120)
        wait_for_object(server, bucket, 'fsync.bin', len(small), timeout=120)
        print('uploaded %.1f s after the server came back' % (time.monotonic() - t0))
    assert object_sha256(server, bucket, 'eio.bin')[0] == hashlib.sha256(big).hexdigest()
    assert object_sha256(server, bucket, 'fsync.bin')[0] == hashlib.sha256(small).hexdigest()
    h = head_object(server, bucket, 'fsync.bin')
    assert h['Metadata'].get('mode') == str(0o100600)
