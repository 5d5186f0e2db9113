"""Smoke tests of the test servers and the fault proxy, driven by aws-cli:
if these fail, the integration tests' failures say nothing about bucketfs."""

import hashlib
import http.client
import json
import os
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from servers import sigv4_headers


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)


def test_aws_cli_puts_lists_and_gets_objects(s3server, bucket, aws, tmp_path):
    src = tmp_path / 'src'
    _write(str(src / 'hello.txt'), b'hello world\n')
    _write(str(src / 'dir' / 'sub' / 'nested.bin'), os.urandom(70000))
    aws('s3', 'cp', '--recursive', '--quiet', src, 's3://%s/top/' % bucket)

    listing = json.loads(aws('s3api', 'list-objects-v2', '--bucket', bucket).stdout)
    keys = sorted(o['Key'] for o in listing['Contents'])
    assert keys == ['top/dir/sub/nested.bin', 'top/hello.txt']

    dst = tmp_path / 'dst'
    aws('s3', 'cp', '--recursive', '--quiet', 's3://%s/top/' % bucket, dst)
    for rel in ('hello.txt', 'dir/sub/nested.bin'):
        assert (dst / rel).read_bytes() == (src / rel).read_bytes()


def test_user_metadata_survives_a_put(s3server, bucket, aws, tmp_path):
    f = tmp_path / 'f'
    f.write_bytes(b'x')
    aws('s3api', 'put-object', '--bucket', bucket, '--key', 'm', '--body', f,
        '--metadata', 'mode=33188,mtime=1700000000.5')
    head = json.loads(aws('s3api', 'head-object', '--bucket', bucket, '--key', 'm').stdout)
    assert head['Metadata'] == {'mode': '33188', 'mtime': '1700000000.5'}
    assert head['ContentLength'] == 1


def test_multipart_upload_round_trips(s3server, bucket, aws, tmp_path):
    # 9 MiB > aws-cli's 8 MiB multipart threshold: two parts (Swift: SLO).
    data = os.urandom(9 << 20)
    (tmp_path / 'big').write_bytes(data)
    aws('s3', 'cp', '--quiet', tmp_path / 'big', 's3://%s/big' % bucket)
    head = json.loads(aws('s3api', 'head-object', '--bucket', bucket, '--key', 'big').stdout)
    assert head['ContentLength'] == len(data)
    if s3server.kind == 'swift':  # s3rver gives a multipart object a plain MD5
        assert head['ETag'].strip('"').endswith('-2')
    aws('s3', 'cp', '--quiet', 's3://%s/big' % bucket, tmp_path / 'back')
    assert hashlib.sha256((tmp_path / 'back').read_bytes()).digest() == hashlib.sha256(data).digest()


def test_s3rver_lists_1100_keys_with_continuation_tokens(s3rver, tmp_path):
    # s3rver's continuation tokens need NODE_OPTIONS=--openssl-legacy-provider
    # (a DES cipher): without it the second page fails.
    bucket = s3rver.new_bucket()
    src = tmp_path / 'many'
    src.mkdir()
    for i in range(1100):
        (src / ('k%04d' % i)).write_bytes(b'%d' % i)
    s3rver.aws('s3', 'cp', '--recursive', '--quiet', src, 's3://%s/' % bucket)

    keys, pages, token = [], 0, None
    while True:
        args = ['s3api', 'list-objects-v2', '--bucket', bucket, '--max-keys', '400',
                '--no-paginate']
        if token:
            args += ['--continuation-token', token]
        page = json.loads(s3rver.aws(*args).stdout)
        pages += 1
        keys += [o['Key'] for o in page['Contents']]
        if not page['IsTruncated']:
            break
        token = page['NextContinuationToken']
    assert pages == 3
    assert keys == ['k%04d' % i for i in range(1100)]

    out = s3rver.aws('s3', 'ls', 's3://%s/' % bucket).stdout
    assert len(out.splitlines()) == 1100


def test_swift_refuses_a_request_signed_with_a_bad_secret(swift, tmp_path):
    bucket = swift.new_bucket()
    status, _, body = swift.request('GET', '/' + bucket, secret_key='not-the-secret')
    assert status == 403 and b'SignatureDoesNotMatch' in body
    p = swift.aws('s3', 'ls', 's3://%s/' % bucket, check=False, secret_key='not-the-secret')
    assert p.returncode != 0 and 'SignatureDoesNotMatch' in p.stderr
    assert swift.request('GET', '/' + bucket)[0] == 200


# ---------------------------------------------------------------- faultproxy

def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _post(url, obj):
    req = urllib.request.Request(url, data=json.dumps(obj).encode(), method='POST',
                                 headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture
def proxied(s3rver, make_faultproxy, tmp_path):
    """(proxy, bucket, local file, its content) with the file in the bucket."""
    proxy = make_faultproxy(s3rver, control_port=0)
    bucket = s3rver.new_bucket()
    data = os.urandom(300000)
    (tmp_path / 'obj').write_bytes(data)
    s3rver.aws('s3', 'cp', '--quiet', tmp_path / 'obj', 's3://%s/obj' % bucket,
               endpoint=proxy.endpoint)
    return proxy, bucket, tmp_path / 'obj', data


def test_faultproxy_passes_requests_through_unchanged(proxied, s3rver, tmp_path):
    proxy, bucket, _, data = proxied
    s3rver.aws('s3', 'cp', '--quiet', 's3://%s/obj' % bucket, tmp_path / 'back',
               endpoint=proxy.endpoint)
    assert (tmp_path / 'back').read_bytes() == data
    stats = _get(proxy.control_endpoint + '/stats')
    assert stats['requests'] >= 3 and stats['faults'] == {}
    assert 'PUT' in stats['methods'] and 'GET' in stats['methods']


def test_aws_fails_when_every_request_gets_503(proxied, s3rver):
    proxy, bucket, _, _ = proxied
    proxy.reset_stats()
    _post(proxy.control_endpoint + '/config', {'rate': 1.0, 'kinds': ['http503']})
    p = s3rver.aws('s3api', 'head-object', '--bucket', bucket, '--key', 'obj',
                   endpoint=proxy.endpoint, check=False)
    assert p.returncode != 0
    stats = proxy.stats()
    assert stats['requests'] == 3  # max_attempts = 3 in the aws config
    assert stats['faults'] == {'http503': 3}


# Not 'reset': this aws-cli (2.9) does not retry a download whose body is
# cut by a reset (urllib3 ProtocolError); see the test after this one.
@pytest.mark.parametrize('kind', ['http500', 'http503', 'slowdown', 'truncate',
                                  'drop'])
def test_aws_retries_past_a_single_fault(proxied, s3rver, tmp_path, kind):
    proxy, bucket, _, data = proxied
    proxy.reset_stats()
    proxy.configure(methods=['GET'])
    proxy.script(kind)
    s3rver.aws('s3', 'cp', '--quiet', 's3://%s/obj' % bucket, tmp_path / 'back',
               endpoint=proxy.endpoint)
    assert (tmp_path / 'back').read_bytes() == data
    stats = proxy.stats()
    assert stats['faults'] == {kind: 1} and stats['script_left'] == 0
    assert stats['methods']['GET'] >= 2
    assert [e['fault'] for e in proxy.log() if e['fault']] == [kind]


def test_reset_cuts_the_response_body_with_an_rst(proxied, s3rver, tmp_path):
    proxy, bucket, _, data = proxied
    proxy.configure(methods=['GET'])
    proxy.script('reset')
    p = s3rver.aws('s3', 'cp', 's3://%s/obj' % bucket, tmp_path / 'back',
                   endpoint=proxy.endpoint, check=False)
    assert p.returncode != 0 and 'Connection reset by peer' in p.stdout + p.stderr

    proxy.script('reset')
    hdrs, _ = sigv4_headers(
        'GET', '127.0.0.1:%d' % proxy.port, '/%s/obj' % bucket, None, b'',
        s3rver.access_key, s3rver.secret_key)
    c = http.client.HTTPConnection('127.0.0.1', proxy.port, timeout=10)
    c.request('GET', '/%s/obj' % bucket, headers=hdrs)
    r = c.getresponse()
    assert r.status == 200 and int(r.getheader('Content-Length')) == len(data)
    got = bytearray()
    with pytest.raises(ConnectionResetError):
        while True:
            piece = r.read1(65536)
            if not piece:
                break
            got += piece
    assert 0 < len(got) < len(data) and bytes(got) == data[:len(got)]
    assert proxy.stats()['faults'] == {'reset': 2}


def test_aws_retries_past_a_stalled_response(proxied, s3rver, tmp_path):
    proxy, bucket, _, data = proxied
    proxy.configure(methods=['GET'], stall_seconds=20)
    proxy.script('stall')
    t0 = time.monotonic()
    s3rver.aws('--cli-read-timeout', '2', 's3', 'cp', '--quiet', 's3://%s/obj' % bucket,
               tmp_path / 'back', endpoint=proxy.endpoint)
    assert time.monotonic() - t0 < 15
    assert (tmp_path / 'back').read_bytes() == data
    assert proxy.stats()['faults'] == {'stall': 1}


def test_faultproxy_random_faults_are_reproducible(s3rver, make_faultproxy):
    bucket = s3rver.new_bucket()

    def run():
        p = make_faultproxy(s3rver, rate=0.5, kinds=['http500', 'http503'], seed=7)
        statuses = []
        for _ in range(20):
            s = socket.create_connection(('127.0.0.1', p.port), timeout=10)
            s.sendall(b'GET /%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'
                      % bucket.encode())
            statuses.append(s.recv(12)[9:12])
            s.close()
        p.stop()
        return statuses

    first = run()
    assert first == run()
    assert set(first) >= {b'500', b'503'}


class _ChunkedUpstream(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    body = bytes(range(256)) * 400

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header('Transfer-Encoding', 'chunked')
        self.end_headers()
        for i in range(0, len(self.body), 7000):
            piece = self.body[i:i + 7000]
            self.wfile.write(b'%x\r\n%s\r\n' % (len(piece), piece))
        self.wfile.write(b'0\r\n\r\n')

    def do_PUT(self):
        n = int(self.headers['Content-Length'])
        got = self.rfile.read(n)
        reply = hashlib.sha256(got).hexdigest().encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


def test_faultproxy_keeps_alive_and_relays_chunked_bodies(make_faultproxy):
    up = ThreadingHTTPServer(('127.0.0.1', 0), _ChunkedUpstream)
    up.daemon_threads = True
    threading.Thread(target=up.serve_forever, daemon=True).start()
    try:
        class Upstream:
            host, port = '127.0.0.1', up.server_address[1]
        proxy = make_faultproxy(Upstream)
        c = http.client.HTTPConnection('127.0.0.1', proxy.port, timeout=10)
        for _ in range(3):  # one client connection, three requests
            c.request('GET', '/x')
            r = c.getresponse()
            assert r.read() == _ChunkedUpstream.body
        payload = os.urandom(1 << 20)
        c.request('PUT', '/y', body=payload, headers={'Expect': '100-continue'})
        assert c.getresponse().read() == hashlib.sha256(payload).hexdigest().encode()
        assert proxy.stats()['connections'] == 1

        proxy.script('truncate')
        c.request('GET', '/x')
        r = c.getresponse()
        with pytest.raises(http.client.IncompleteRead):
            r.read()
        c.close()
    finally:
        up.shutdown()
        up.server_close()
