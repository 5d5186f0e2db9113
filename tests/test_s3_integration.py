"""The s3/ library against real servers (s3rver and Swift), directly and
through the fault-injecting proxy.

The binaries come from $BUCKETFS_BUILD (tools/test.sh sets it).  When
$BUCKETFS_ASAN_BUILD is set too, the fault tests run the ASan+UBSan build of
s3tool, and any sanitizer report fails the test.
"""

import errno
import hashlib
import os
import subprocess
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get('BUCKETFS_BUILD', os.path.join(ROOT, 'build'))
ASAN_BUILD = os.environ.get('BUCKETFS_ASAN_BUILD')


def binary(name, asan=False):
    base = ASAN_BUILD if asan and ASAN_BUILD else BUILD
    path = os.path.join(base, 'tests', 's3', name)
    if not os.path.exists(path):
        pytest.fail('%s not built (BUCKETFS_BUILD=%s)' % (path, base))
    return path


def client_env(server, bucket):
    env = server.client_env()
    env.update({'S3_ENDPOINT': server.endpoint, 'S3_BUCKET': bucket,
                'S3_PATH_STYLE': '1',
                # s3rver lacks these; Swift covers them (see test_s3_ops.c)
                'S3_QUIRKS': ('upload-part-copy,list-uploads'
                              if type(server).__name__ == 'S3rver' else ''),
                'ASAN_OPTIONS': 'detect_leaks=1:exitcode=99:abort_on_error=0',
                'UBSAN_OPTIONS': 'print_stacktrace=1:halt_on_error=1:exitcode=99'})
    return env


def check_sanitizers(stderr):
    for marker in ('AddressSanitizer', 'LeakSanitizer', 'runtime error:'):
        assert marker not in stderr, 'sanitizer report:\n' + stderr


def s3tool(server, bucket, *args, endpoint=None, input=None, timeout=120):
    env = client_env(server, bucket)
    if endpoint:
        env['S3_ENDPOINT'] = endpoint
    p = subprocess.run([binary('s3tool', asan=True), '--path-style', '--stats'] + list(args),
                       env=env, input=input, capture_output=True, timeout=timeout)
    stderr = p.stderr.decode(errors='replace')
    check_sanitizers(stderr)
    return p.returncode, p.stdout, stderr


def stat_of(stderr, name):
    for line in stderr.splitlines():
        if line.startswith('stats:'):
            for field in line.split()[1:]:
                k, v = field.split('=')
                if k == name:
                    return int(v)
    raise AssertionError('no %s in stats: %s' % (name, stderr))


def test_every_operation(s3server, bucket):
    """test_s3_ops: metadata, odd keys, ranges, copy, delete, 2,500-key
    listing with max-keys=100, batch delete, 100 MiB parallel multipart,
    UploadPartCopy, abort, ListMultipartUploads, missing bucket."""
    p = subprocess.run([binary('test_s3_ops')], env=client_env(s3server, bucket),
                       capture_output=True, timeout=900)
    out = p.stdout.decode(errors='replace')
    print(out)
    print(p.stderr.decode(errors='replace')[-5000:])
    assert p.returncode == 0, out
    assert 'FAIL' not in out


@pytest.fixture
def blob(s3server, bucket, tmp_path):
    """A 3 MiB object put with aws-cli; returns (key, bytes)."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / 'blob'
    path.write_bytes(data)
    s3server.aws('s3api', 'put-object', '--bucket', bucket, '--key', 'dir/blob one',
                 '--body', str(path))
    return 'dir/blob one', data


FAULTS = ['http500', 'http503', 'slowdown', 'reset', 'truncate', 'stall']


@pytest.mark.parametrize('kind', FAULTS)
def test_get_survives_one_fault(s3server, bucket, blob, make_faultproxy, kind):
    key, data = blob
    proxy = make_faultproxy(s3server, stall_seconds=30)
    proxy.configure(methods=['GET']).script(kind)
    rc, out, err = s3tool(s3server, bucket, '--timeout', '2', 'get', key,
                          endpoint=proxy.endpoint)
    assert rc == 0, err
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
    assert stat_of(err, 'retries') >= 1
    assert proxy.stats()['script_left'] == 0


@pytest.mark.parametrize('kind', FAULTS)
def test_put_survives_one_fault(s3server, bucket, make_faultproxy, tmp_path, kind):
    data = os.urandom(1024 * 1024)
    src = tmp_path / 'src'
    src.write_bytes(data)
    proxy = make_faultproxy(s3server, stall_seconds=30)
    proxy.configure(methods=['PUT']).script(kind)
    rc, out, err = s3tool(s3server, bucket, '--timeout', '2', 'put', 'up/file', str(src),
                          '--meta', 'mode=33188', endpoint=proxy.endpoint)
    assert rc == 0, err
    got = tmp_path / 'got'
    s3server.aws('s3api', 'get-object', '--bucket', bucket, '--key', 'up/file', str(got))
    assert got.read_bytes() == data
    assert stat_of(err, 'retries') >= 1


@pytest.mark.parametrize('kind', ['http503', 'reset'])
def test_multipart_survives_faults(s3server, bucket, make_faultproxy, tmp_path, kind):
    data = os.urandom(24 * 1024 * 1024 + 5)
    src = tmp_path / 'src'
    src.write_bytes(data)
    proxy = make_faultproxy(s3server, rate=0.25, kinds=[kind], seed=7)
    rc, out, err = s3tool(s3server, bucket, '--timeout', '5', '--retries', '8', 'upload',
                          'mp/file', str(src), '--part-size', str(5 * 1024 * 1024),
                          '--parallel', '4', endpoint=proxy.endpoint, timeout=300)
    assert rc == 0, err
    proxy.clear()
    got = tmp_path / 'got'
    s3server.aws('s3api', 'get-object', '--bucket', bucket, '--key', 'mp/file', str(got))
    assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert sum(proxy.stats()['faults'].values()) >= 1


EXHAUSTED = {
    'http500': errno.EIO,
    'http503': errno.EAGAIN,
    'slowdown': errno.EAGAIN,
    'reset': errno.EIO,
    'truncate': errno.EIO,
    'stall': errno.ETIMEDOUT,
}


@pytest.mark.parametrize('kind', FAULTS)
def test_get_fails_with_errno_when_retries_run_out(s3server, bucket, blob, make_faultproxy,
                                                   kind):
    key, data = blob
    proxy = make_faultproxy(s3server, rate=1.0, kinds=[kind], stall_seconds=30)
    rc, out, err = s3tool(s3server, bucket, '--timeout', '1', '--retries', '2', 'get', key,
                          endpoint=proxy.endpoint)
    assert rc == EXHAUSTED[kind], err
    assert stat_of(err, 'GET') == 3, err       # the first attempt + 2 retries
    assert stat_of(err, 'retries') == 2


def test_client_errors_are_not_retried(s3server, bucket, make_faultproxy):
    proxy = make_faultproxy(s3server)
    rc, out, err = s3tool(s3server, bucket, 'get', 'no/such/key', endpoint=proxy.endpoint)
    assert rc == errno.ENOENT, err
    assert proxy.stats()['requests'] == 1
    assert stat_of(err, 'retries') == 0


def test_connection_refused_is_reported(s3server, bucket):
    import socket
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()   # nothing listens there now
    rc, out, err = s3tool(s3server, bucket, '--retries', '1', 'head', 'x',
                          endpoint='http://127.0.0.1:%d' % port)
    assert rc == errno.ECONNREFUSED, err


def test_bad_secret_is_refused_by_a_verifying_server(swift):
    bucket = swift.new_bucket()
    env = client_env(swift, bucket)
    env['AWS_SECRET_ACCESS_KEY'] = 'wrong-secret'
    p = subprocess.run([binary('s3tool'), '--path-style', '--retries', '0', 'ls'], env=env,
                       capture_output=True, timeout=60)
    assert p.returncode in (errno.EPERM, errno.EACCES), p.stderr
    assert b'SignatureDoesNotMatch' in p.stderr or b'AccessDenied' in p.stderr


def test_odd_keys_listed_like_aws_sees_them(s3server, bucket, tmp_path):
    """Keys written by aws-cli come back from our listing byte for byte."""
    keys = ['a b/c+d', 'per%25cent', 'uni/日本語 ü', 'x&y=z?w', 'tilde~/hash#']
    f = tmp_path / 'f'
    f.write_bytes(b'x')
    for k in keys:
        s3server.aws('s3api', 'put-object', '--bucket', bucket, '--key', k, '--body', str(f))
    rc, out, err = s3tool(s3server, bucket, 'ls')
    assert rc == 0, err
    listed = [line.split('\t')[1] for line in out.decode().splitlines()
              if line.startswith('OBJ\t')]
    assert sorted(listed) == sorted(keys)


def test_virtual_hosted_addressing_is_signed_right(swift, tmp_path):
    """http://BUCKET.localhost:PORT (curl resolves *.localhost to loopback);
    Swift's s3api serves it (storage_domain = localhost) and verifies the
    signature, whose Host is the virtual host."""
    bucket = swift.new_bucket()
    env = client_env(swift, bucket)
    env['S3_ENDPOINT'] = 'http://localhost:%d' % swift.port
    f = tmp_path / 'f'
    f.write_bytes(b'virtual host\n')

    def run(*args):
        p = subprocess.run([binary('s3tool'), '-v'] + list(args), env=env,
                           capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout, p.stderr.decode()

    out, err = run('put', 'dir/a b+c', str(f))
    assert 'virtual-hosted' in err
    out, err = run('ls')
    assert out.decode().split('\t')[1] == 'dir/a b+c'
    out, err = run('get', 'dir/a b+c')
    assert out == b'virtual host\n'
    # and aws-cli (path-style) sees the same object
    p = swift.aws('s3api', 'head-object', '--bucket', bucket, '--key', 'dir/a b+c')
    assert '"ContentLength": 13' in p.stdout


# ------------------------------------------------- malformed and huge XML, wrong ETags

def put_keys(server, bucket, n, prefix='k/'):
    """n small objects, put with s3tool straight to the server."""
    f = '/dev/null'
    for i in range(n):
        rc, _, err = s3tool(server, bucket, 'put', '%s%03d' % (prefix, i), f)
        assert rc == 0, err
    return sorted('%s%03d' % (prefix, i) for i in range(n))


def listed(out):
    return sorted(line.split('\t')[1] for line in out.decode().splitlines()
                  if line.startswith('OBJ\t'))


LIST_RE = r'list-type=2'


def test_listing_survives_malformed_xml(s3server, bucket, make_faultproxy):
    """Three listing answers in a row are 200s with malformed XML (cut short,
    garbled, last end tag dropped): each is retried, the fourth is used."""
    keys = put_keys(s3server, bucket, 5)
    proxy = make_faultproxy(s3server, seed=3)
    proxy.configure(path_regex=LIST_RE).script('badxml', 'badxml', 'badxml')
    rc, out, err = s3tool(s3server, bucket, '--retries', '3', 'ls', endpoint=proxy.endpoint)
    assert rc == 0, err
    assert listed(out) == keys
    assert stat_of(err, 'LIST') == 4 and stat_of(err, 'retries') == 3, err
    assert 'malformed XML' in err
    assert sum(proxy.stats()['garbled'].values()) == 3


def test_malformed_listing_every_time_fails_with_eproto(s3server, bucket, make_faultproxy):
    put_keys(s3server, bucket, 2)
    proxy = make_faultproxy(s3server, rate=1.0, kinds=['badxml'], seed=5,
                            path_regex=LIST_RE)
    rc, out, err = s3tool(s3server, bucket, '--retries', '2', 'ls', endpoint=proxy.endpoint)
    assert rc == errno.EPROTO, err
    assert stat_of(err, 'LIST') == 3, err
    assert 'malformed XML in a 200 answer' in err
    assert out == b''


def test_garbled_error_answer_keeps_its_status(s3server, bucket, make_faultproxy):
    """A 404 whose <Error> document is malformed is still a 404: ENOENT, no retry."""
    proxy = make_faultproxy(s3server)
    proxy.configure(methods=['GET']).script('badxml')
    rc, out, err = s3tool(s3server, bucket, 'get', 'no/such/key', endpoint=proxy.endpoint)
    assert rc == errno.ENOENT, err
    assert proxy.stats()['requests'] == 1 and proxy.stats()['not_applied'] == {}


# Runs a command and reports its peak RSS (ru_maxrss of its only child) on stderr.
RSS_WRAPPER = ('import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); '
               'sys.stderr.write("maxrss_kib=%d\\n" % resource.getrusage('
               'resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(p.returncode)')


@pytest.mark.parametrize('huge_bytes', [160 << 20, 0], ids=['content-length-160MiB', 'endless'])
def test_huge_listing_is_refused(s3server, bucket, make_faultproxy, huge_bytes):
    """A listing answer of 160 MiB (or one that never ends) is refused once
    16 MiB have arrived: EIO at once, not retried, and the client's memory
    stays bounded (measured: peak RSS of s3tool)."""
    put_keys(s3server, bucket, 2)
    proxy = make_faultproxy(s3server, huge_bytes=huge_bytes)
    proxy.configure(path_regex=LIST_RE).script('hugexml')
    env = client_env(s3server, bucket)
    env['S3_ENDPOINT'] = proxy.endpoint
    t0 = time.monotonic()
    p = subprocess.run(['/usr/bin/python3', '-c', RSS_WRAPPER, binary('s3tool', asan=True),
                        '--path-style', '--stats', '--retries', '2', 'ls'],
                       env=env, capture_output=True, timeout=120)
    dt = time.monotonic() - t0
    rc, err = p.returncode, p.stderr.decode(errors='replace')
    check_sanitizers(err)
    rss = int(err.split('maxrss_kib=')[1].split()[0])
    sent = proxy.stats()['huge_bytes_sent']
    print('refused after %.1f s; proxy sent %.1f MiB; s3tool peak RSS %.1f MiB' % (
        dt, sent / 2**20, rss / 1024))
    assert rc == errno.EIO, err
    assert 'larger than 16 MiB' in err, err
    assert stat_of(err, 'LIST') == 1 and stat_of(err, 'retries') == 0, err
    assert sent < 64 << 20      # the client hung up, long before 160 MiB
    base = 200 if ASAN_BUILD else 40   # an ASan process starts big
    assert rss < (base + 3 * 16) * 1024, 'peak RSS %d KiB' % rss


def md5_etag(data):
    return '"%s"' % hashlib.md5(data).hexdigest()


def test_put_with_a_wrong_etag_is_retried(s3server, bucket, make_faultproxy, tmp_path):
    """The answer to a PUT names another ETag than the MD5 of what was sent:
    the PUT is repeated, and the ETag reported is the true one."""
    data = os.urandom(300 * 1024)
    src = tmp_path / 'src'
    src.write_bytes(data)
    proxy = make_faultproxy(s3server)
    proxy.configure(methods=['PUT']).script('badetag')
    rc, out, err = s3tool(s3server, bucket, 'put', 'e/file', str(src), endpoint=proxy.endpoint)
    assert rc == 0, err
    assert out.decode().strip() == md5_etag(data)
    assert stat_of(err, 'PUT') == 2 and stat_of(err, 'retries') == 1, err
    assert 'is not the MD5' in err
    assert object_etag(s3server, bucket, 'e/file') == md5_etag(data)


def test_put_with_a_wrong_etag_every_time_fails_with_eio(s3server, bucket, make_faultproxy,
                                                          tmp_path):
    src = tmp_path / 'src'
    src.write_bytes(os.urandom(1000))
    proxy = make_faultproxy(s3server, rate=1.0, kinds=['badetag'], methods=['PUT'])
    rc, out, err = s3tool(s3server, bucket, '--retries', '2', 'put', 'e/file', str(src),
                          endpoint=proxy.endpoint)
    assert rc == errno.EIO, err
    assert stat_of(err, 'PUT') == 3, err
    assert 'is not the MD5' in err
    assert out == b''


def object_etag(server, bucket, key):
    st, h, _ = server.request('HEAD', '/%s/%s' % (bucket, key))
    assert st == 200, st
    return h.get('etag')


MPU = 5 * 1024 * 1024


def mpu_upload(server, bucket, proxy, tmp_path, key='mp/file', retries=3):
    data = os.urandom(3 * MPU + 1234)
    src = tmp_path / 'src'
    src.write_bytes(data)
    rc, out, err = s3tool(server, bucket, '--retries', str(retries), 'upload', key, str(src),
                          '--part-size', str(MPU), '--parallel', '2',
                          endpoint=proxy.endpoint, timeout=300)
    return data, rc, out.decode().strip(), err


def test_part_with_a_wrong_etag_is_retried(s3server, bucket, make_faultproxy, tmp_path):
    proxy = make_faultproxy(s3server)
    proxy.configure(methods=['PUT'], path_regex='partNumber=2').script('badetag')
    data, rc, etag, err = mpu_upload(s3server, bucket, proxy, tmp_path)
    assert rc == 0, err
    assert 'is not the MD5' in err and stat_of(err, 'retries') == 1, err
    assert object_bytes_eq(s3server, bucket, 'mp/file', data)
    assert etag == object_etag(s3server, bucket, 'mp/file')


@pytest.mark.parametrize('kind', ['badetag', 'badxml'])
def test_complete_with_a_bad_answer(s3server, bucket, make_faultproxy, tmp_path, kind):
    """CompleteMultipartUpload answers 200 with another ETag (badetag) or a
    malformed document (badxml: Complete is repeated).  A wrong ETag is
    believed only once a HEAD shows the object has it; the ETag reported is
    the object's true one, never the wrong one."""
    proxy = make_faultproxy(s3server, seed=11)
    proxy.configure(methods=['POST'], path_regex=r'uploadId=').script(kind)
    data, rc, etag, err = mpu_upload(s3server, bucket, proxy, tmp_path)
    print(err)
    assert rc == 0, err
    assert object_bytes_eq(s3server, bucket, 'mp/file', data)
    assert etag == object_etag(s3server, bucket, 'mp/file')
    if kind == 'badetag':
        assert 'CompleteMultipartUpload' in err and 'answered ETag' in err, err
        assert stat_of(err, 'HEAD') >= 1, err
    else:
        # the repeated Complete either succeeds again (Swift) or finds the
        # upload gone, and then a HEAD decides (s3rver)
        assert 'malformed XML' in err, err


def object_bytes_eq(server, bucket, key, data):
    st, _, body = server.request('GET', '/%s/%s' % (bucket, key))
    return st == 200 and hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
