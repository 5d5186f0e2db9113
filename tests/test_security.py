"""Security (issue 7): secrets never reach a log at any level, TLS is verified
unless a CA is given, and what bucketfs creates or accepts has safe modes.

All against s3rver, which does not check SigV4 signatures, session tokens or
SSE-C keys: any distinctive secret can be sent, and the point here is only
what bucketfs and s3tool write down, not what the server makes of it.
"""

import base64
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time

import pytest

from mount import BUILD, Mount, bucketfs_bin


def s3tool_bin():
    return os.path.join(BUILD, 'tests', 's3', 's3tool')


class DebugMount(Mount):
    """A mount with FUSE's own debug output (-d) on the same stderr log.

    FUSE -d reports each failed request as "unique: N, error: -2 (...)";
    those are replies, not bucketfs errors."""

    def argv(self):
        return super().argv() + ['-d']

    def errors(self):
        return [line for line in super().errors() if not line.lstrip().startswith('unique:')]


def put(server, bucket, key, body, headers=None):
    status, _, data = server.request('PUT', '/%s/%s' % (bucket, key), body=body,
                                     headers=headers or {})
    assert status == 200, 'PUT %s: %d %s' % (key, status, data[:300])


# ------------------------------------------------------------------ secrets

def files_under(*roots):
    for root in roots:
        if os.path.isfile(root):
            yield root
        for dirpath, _, names in os.walk(root):
            for n in names:
                yield os.path.join(dirpath, n)


def secret_hits(paths, secrets):
    """[(path, what)] for every secret, or header that carries one, found."""
    forbidden = [re.compile(rb'authorization:', re.I),
                 re.compile(rb'signature=[0-9a-f]{16}', re.I),
                 re.compile(rb'x-amz-signature', re.I),
                 re.compile(rb'x-amz-security-token:', re.I),
                 re.compile(rb'x-amz-server-side-encryption-customer-key:', re.I)]
    hits = []
    for p in paths:
        with open(p, 'rb') as f:
            data = f.read()
        for name, s in secrets.items():
            if s in data:
                hits.append((p, name))
        for rx in forbidden:
            if rx.search(data):
                hits.append((p, rx.pattern.decode()))
    return hits


def walk_and_read(mp):
    for dirpath, dirnames, filenames in os.walk(mp):
        for n in filenames:
            with open(os.path.join(dirpath, n), 'rb') as f:
                f.read()


def test_no_secret_reaches_any_log_at_debug_level(s3rver, tmp_path):
    bucket = s3rver.new_bucket()
    for key, body in [('top.txt', b'top\n'), ('dir/inner.txt', b'inner\n' * 1000),
                      ('dir/sub/deep.bin', os.urandom(300000))]:
        put(s3rver, bucket, key, body)
    # Distinctive secrets, none a substring of anything else the run writes.
    secret_key = 'SeCrEt' + base64.b32encode(os.urandom(20)).decode()
    token = 'ToKeN' + base64.b32encode(os.urandom(60)).decode()
    sse_raw = os.urandom(32)
    sse_b64 = base64.b64encode(sse_raw)
    keyfile = tmp_path / 'sse-c.key'
    keyfile.write_bytes(sse_b64 + b'\n')
    keyfile.chmod(0o600)
    env = {'AWS_SECRET_ACCESS_KEY': secret_key, 'AWS_SESSION_TOKEN': token}
    logfile = tmp_path / 'bucketfs-logfile.log'

    # 1. The mount, with FUSE's debug output, the bucketfs log on stderr,
    # through a relay that records the wire...
    relay = Relay(s3rver.host, s3rver.port, record=True)
    m = DebugMount(s3rver, bucket, tmp_path / 'm1', env=env,
                   opts={'dbglevel': 'debug', 'use_sse': 'custom:%s' % keyfile,
                         'url': 'http://127.0.0.1:%d' % relay.port})
    try:
        with m:
            walk_and_read(m.mp)
    finally:
        relay.stop()
    wire = b''.join(relay.sent).lower()
    # ... where the secrets did travel (so their absence below means something)
    assert b'x-amz-security-token: ' + token.lower().encode() in wire
    assert b'x-amz-server-side-encryption-customer-key: ' + sse_b64.lower() in wire
    assert b'authorization: aws4-hmac-sha256' in wire
    m.opts['url'] = s3rver.endpoint  # again, direct, from the index and cache
    with m:
        walk_and_read(m.mp)
        assert not os.path.exists(os.path.join(m.mp, 'missing'))  # a 404 too
    log_text = m.log_text()
    # the run really was at debug level, with FUSE's trace, and with SSE-C
    assert 'debug' in log_text and 'unique:' in log_text, log_text[-3000:]
    # 2. ... and the same with logfile= (the log file a daemon writes).
    m2 = Mount(s3rver, bucket, tmp_path / 'm2', env=env,
               opts={'dbglevel': 'debug', 'use_sse': 'custom:%s' % keyfile,
                     'logfile': str(logfile)})
    with m2:
        with open(os.path.join(m2.mp, 'dir', 'inner.txt'), 'rb') as f:
            assert f.read() == b'inner\n' * 1000
    assert logfile.exists() and stat.S_IMODE(logfile.stat().st_mode) == 0o600

    # 3. s3tool -v: listing, HEAD, GET, PUT, a failing GET (an S3 error
    # body), with the session token.
    tool_logs = []
    tenv = s3rver.client_env()
    tenv.update(env)
    src = tmp_path / 'upload.bin'
    src.write_bytes(os.urandom(5000))
    for i, args in enumerate([['ls', ''], ['head', 'top.txt'], ['get', 'dir/inner.txt'],
                              ['put', 'new.bin', str(src)], ['get', 'no/such/key'],
                              ['rm', 'new.bin']]):
        p = subprocess.run([s3tool_bin(), '-v', '--endpoint', s3rver.endpoint, '--bucket', bucket,
                            '--path-style', '--retries', '0'] + args, env=tenv,
                           capture_output=True, timeout=60)
        log = tmp_path / ('s3tool-%d.log' % i)
        log.write_bytes(p.stderr)
        tool_logs.append(str(log))
        assert p.returncode == (2 if args[1] == 'no/such/key' else 0), p.stderr.decode()

    secrets = {'secret key': secret_key.encode(), 'session token': token.encode(),
               'SSE-C key (base64)': sse_b64, 'SSE-C key (raw)': sse_raw}
    # Every log, and everything bucketfs left in its cache and index.
    paths = list(files_under(*(m.logs + m2.logs + [str(logfile)] + tool_logs +
                               [m.cache_dir, m2.cache_dir])))
    assert len(paths) > 6
    hits = secret_hits(paths, secrets)
    assert not hits, hits


# ------------------------------------------------------------------ TLS

class Relay:
    """A TCP relay on 127.0.0.1 to (host, port): with cert and key, TLS in
    front of a plain-HTTP server; with record, keeps what clients sent (the
    wire, to show the secrets were really in play).  Stops with the test."""

    def __init__(self, host, port, cert=None, key=None, record=False):
        self.ctx = None
        if cert:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(cert, key)
        self.sent = [] if record else None
        self.backend = (host, port)
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(32)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopped.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._handle, args=(c,), daemon=True).start()

    def _handle(self, c):
        try:
            c.settimeout(30)
            t = self.ctx.wrap_socket(c, server_side=True) if self.ctx else c
        except (OSError, ssl.SSLError):
            c.close()  # the client refused our certificate: expected
            return
        try:
            b = socket.create_connection(self.backend, timeout=30)
        except OSError:
            t.close()
            return

        def pump(src, dst, record=None):
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    if record is not None:
                        record.append(data)
                    dst.sendall(data)
            except OSError:
                pass
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        th = threading.Thread(target=pump, args=(b, t), daemon=True)
        th.start()
        pump(t, b, self.sent)
        th.join(30)
        t.close()
        b.close()

    def stop(self):
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def tls_proxy(s3rver, tmp_path):
    cert, key = str(tmp_path / 'cert.pem'), str(tmp_path / 'key.pem')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
                    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
                    '-keyout', key, '-out', cert], check=True, capture_output=True)
    p = Relay(s3rver.host, s3rver.port, cert, key)
    p.cert = cert
    yield p
    p.stop()


def test_tls_is_verified_and_a_ca_bundle_makes_it_work(s3rver, tls_proxy, tmp_path):
    bucket = s3rver.new_bucket()
    put(s3rver, bucket, 'hello.txt', b'over TLS\n')
    url = 'https://127.0.0.1:%d' % tls_proxy.port
    mp = tmp_path / 'mnt'
    mp.mkdir()
    env = s3rver.client_env()
    opts = 'url=%s,use_path_request_style,cache_dir=%s,retries=1' % (url, tmp_path / 'cache')

    # Self-signed: refused, with one clear line, and nothing mounted.
    p = subprocess.run([bucketfs_bin(), bucket, str(mp), '-f', '-o', opts], env=env,
                       capture_output=True, text=True, timeout=120)
    lines = [line for line in p.stderr.splitlines() if line.startswith('bucketfs:')]
    print(p.stderr)
    assert p.returncode != 0 and not os.path.ismount(str(mp))
    assert len(lines) == 1, p.stderr
    assert 'TLS connection to %s failed (use ca_bundle=' % url in lines[0], lines[0]

    # With the CA: mounted and readable.
    m = Mount(s3rver, bucket, tmp_path / 'ok',
              opts={'url': url, 'ca_bundle': tls_proxy.cert, 'retries': 1})
    with m:
        assert open(os.path.join(m.mp, 'hello.txt'), 'rb').read() == b'over TLS\n'

    # s3tool: the same two ways.
    base = [s3tool_bin(), '--endpoint', url, '--bucket', bucket, '--path-style', '--retries', '0']
    p = subprocess.run(base + ['get', 'hello.txt'], env=env, capture_output=True, timeout=60)
    assert p.returncode != 0 and p.stdout == b'', p.stderr
    assert b'certificate' in p.stderr.lower() or b'ssl' in p.stderr.lower(), p.stderr
    p = subprocess.run(base[:1] + ['--ca-bundle', tls_proxy.cert] + base[1:] + ['get', 'hello.txt'],
                       env=env, capture_output=True, timeout=60)
    assert p.returncode == 0 and p.stdout == b'over TLS\n', p.stderr


# ------------------------------------------------------------------ modes

def test_cache_and_index_are_private(s3rver, tmp_path):
    bucket = s3rver.new_bucket()
    put(s3rver, bucket, 'a.txt', b'a' * 100000)
    put(s3rver, bucket, 'd/b.txt', b'b' * 10)
    cache = tmp_path / 'new' / 'cache'  # created by bucketfs, parents too
    with Mount(s3rver, bucket, tmp_path, cache_dir=str(cache)) as m:
        for n in ('a.txt', 'd/b.txt'):
            with open(os.path.join(m.mp, n), 'rb') as f:
                f.read()
    seen = 0
    for dirpath, dirnames, filenames in os.walk(cache):
        for n in [''] + dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            seen += 1
            assert st.st_mode & 0o077 == 0, '%s has mode %o' % (p, stat.S_IMODE(st.st_mode))
    assert any(f.endswith('index.db') for _, _, fs in os.walk(cache) for f in fs)
    assert seen >= 4


def test_passwd_file_readable_by_others_is_refused(s3rver, tmp_path):
    bucket = s3rver.new_bucket()
    put(s3rver, bucket, 'x', b'x')
    pw = tmp_path / 'passwd'
    pw.write_text('%s:%s\n' % (s3rver.access_key, s3rver.secret_key))
    mp = tmp_path / 'mnt'
    mp.mkdir()
    env = s3rver.client_env()
    for k in ('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY'):
        del env[k]
    for mode in (0o640, 0o604):
        pw.chmod(mode)
        p = subprocess.run([bucketfs_bin(), bucket, str(mp), '-f', '-o',
                            'url=%s,use_path_request_style,passwd_file=%s,cache_dir=%s'
                            % (s3rver.endpoint, pw, tmp_path / 'cache')],
                           env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode != 0 and not os.path.ismount(str(mp))
        # (with -f the log is on stderr too; the user's line is the one)
        lines = [line for line in p.stderr.splitlines() if line.startswith('bucketfs:')]
        assert len(lines) == 1, p.stderr
        assert 'must not be readable by group or others (chmod 600)' in lines[0], p.stderr
    pw.chmod(0o600)
    with Mount(s3rver, bucket, tmp_path / 'ok', opts={'passwd_file': str(pw)},
               env={'AWS_ACCESS_KEY_ID': '', 'AWS_SECRET_ACCESS_KEY': ''}) as m:
        assert os.listdir(m.mp) == ['x']


@pytest.fixture
def world_dir():
    """A directory user nobody can traverse (pytest's tmp_path is 0700)."""
    d = tempfile.mkdtemp(prefix='bucketfs-perm-', dir='/tmp')
    os.chmod(d, 0o755)
    yield d
    for sub in ('a', 'b'):
        mp = os.path.join(d, sub, 'mnt')
        if os.path.ismount(mp):
            subprocess.run(['fusermount3', '-u', '-z', mp])
    shutil.rmtree(d, ignore_errors=True)


def as_nobody(*cmd):
    return subprocess.run(['runuser', '-u', 'nobody', '--'] + list(cmd), capture_output=True,
                          text=True, timeout=30)


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to switch to user nobody')
def test_allow_other_is_off_by_default_and_brings_default_permissions(s3rver, world_dir):
    bucket = s3rver.new_bucket()
    put(s3rver, bucket, 'public.txt', b'public\n', headers={'x-amz-meta-mode': '33188'})
    put(s3rver, bucket, 'private.txt', b'private\n',
        headers={'x-amz-meta-mode': '33152', 'x-amz-meta-uid': '1234'})

    wa = os.path.join(world_dir, 'a')
    os.makedirs(wa)
    os.chmod(wa, 0o755)
    with Mount(s3rver, bucket, wa) as m:
        assert sorted(os.listdir(m.mp)) == ['private.txt', 'public.txt']  # root: fine
        p = as_nobody('ls', m.mp)
        assert p.returncode != 0 and 'Permission denied' in p.stderr, p
        p = as_nobody('cat', os.path.join(m.mp, 'public.txt'))
        assert p.returncode != 0, p

    wb = os.path.join(world_dir, 'b')
    os.makedirs(wb)
    os.chmod(wb, 0o755)
    with Mount(s3rver, bucket, wb, opts={'allow_other': None}) as m:
        opts = [line.split() for line in open('/proc/self/mountinfo')
                if line.split()[4] == m.mp]
        assert opts, 'mount not in mountinfo'
        super_opts = opts[0][-1].split(',')
        assert 'allow_other' in super_opts and 'default_permissions' in super_opts, super_opts
        p = as_nobody('ls', m.mp)
        assert p.returncode == 0 and sorted(p.stdout.split()) == ['private.txt', 'public.txt'], p
        p = as_nobody('cat', os.path.join(m.mp, 'public.txt'))
        assert p.returncode == 0 and p.stdout == 'public\n', p
        # mode 0600, uid 1234: the kernel checks it (default_permissions)
        p = as_nobody('cat', os.path.join(m.mp, 'private.txt'))
        assert p.returncode != 0 and 'Permission denied' in p.stderr, p
