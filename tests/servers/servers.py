#!/usr/bin/python3
"""Local S3 servers for the tests and the demo, on 127.0.0.1 only.

  S3rver  the s3rver npm package (tests/node_modules, installed by
          tools/deps.sh): fast, one process, credentials S3RVER / S3RVER. It
          checks only the access key id of a SigV4 request, not the
          signature (its V4 check is unimplemented): use Swift for that.
  Swift   OpenStack Swift 2.30 with s3api + tempauth (swift-start.sh /
          swift-stop.sh here): a second implementation that verifies
          signatures and does multipart through SLO; credentials test:tester /
          testing.

Both serve path-style requests in region us-east-1, and share one interface:

    srv = S3rver().start()             # or Swift().start()
    srv.endpoint                       # 'http://127.0.0.1:PORT'
    srv.host, srv.port, srv.access_key, srv.secret_key, srv.region
    name = srv.new_bucket()            # a fresh bucket with a unique name
    srv.create_bucket('name')
    srv.aws('s3', 'ls', 's3://' + name)  # aws-cli, env set up, checked
    srv.client_env()                   # env for a client: AWS_* credentials
    srv.request('GET', '/' + name)     # SigV4-signed request -> (status, headers, body)
    srv.stop()

Every server stops by itself after `lifetime` seconds (default 5400) even if
the process that started it dies.

As a program (tools/demo.sh uses it; the server stays up after it returns):

    servers.py start s3rver|swift --dir DIR [--port N] [--bucket B]... [--lifetime S]
        prints shell lines: S3_ENDPOINT=... AWS_ACCESS_KEY_ID=... ...
    servers.py stop --dir DIR
"""

import argparse
import datetime
import hashlib
import hmac
import http.client
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
S3RVER_JS = os.path.join(TESTS, 'node_modules', 's3rver', 'bin', 's3rver.js')
SWIFT_START = os.path.join(HERE, 'swift-start.sh')
SWIFT_STOP = os.path.join(HERE, 'swift-stop.sh')
DEFAULT_LIFETIME = 5400

_bucket_seq = itertools.count(1)


def aws_bin():
    """Debian's aws-cli (v2, /usr/bin/aws) first: the one on PATH may be
    another install with other defaults."""
    if os.path.exists('/usr/bin/aws'):
        return '/usr/bin/aws'
    return shutil.which('aws')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def swift_available():
    return all(shutil.which(b) for b in (
        'swift-proxy-server', 'swift-account-server', 'swift-container-server',
        'swift-object-server', 'swift-ring-builder'))


def s3rver_available():
    return os.path.exists(S3RVER_JS) and shutil.which('node') is not None


def sigv4_headers(method, host, path, query, body, access_key, secret_key,
                  region='us-east-1', headers=None, now=None):
    """Headers (with Authorization) for a SigV4-signed S3 request. `path` is
    the URI path, already percent-encoded; `query` a dict or list of pairs."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    amzdate, day = now.strftime('%Y%m%dT%H%M%SZ'), now.strftime('%Y%m%d')
    payload_hash = hashlib.sha256(body).hexdigest()
    hdrs = {k.lower(): str(v).strip() for k, v in (headers or {}).items()}
    hdrs.update({'host': host, 'x-amz-content-sha256': payload_hash,
                 'x-amz-date': amzdate})
    pairs = sorted((query.items() if isinstance(query, dict) else query) or [])
    cq = '&'.join('%s=%s' % (urllib.parse.quote(str(k), safe='-_.~'),
                             urllib.parse.quote(str(v), safe='-_.~')) for k, v in pairs)
    signed = ';'.join(sorted(hdrs))
    creq = '\n'.join([method, path, cq,
                      ''.join('%s:%s\n' % (k, hdrs[k]) for k in sorted(hdrs)),
                      signed, payload_hash])
    scope = '%s/%s/s3/aws4_request' % (day, region)
    sts = '\n'.join(['AWS4-HMAC-SHA256', amzdate, scope,
                     hashlib.sha256(creq.encode()).hexdigest()])
    k = ('AWS4' + secret_key).encode()
    for m in (day, region, 's3', 'aws4_request'):
        k = hmac.new(k, m.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
    hdrs['authorization'] = ('AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, '
                             'Signature=%s' % (access_key, scope, signed, sig))
    return hdrs, cq


class S3Server:
    """What both servers share; subclasses set the credentials and start()."""

    kind = None
    access_key = None
    secret_key = None
    region = 'us-east-1'
    host = '127.0.0.1'

    def __init__(self, base_dir=None, port=None, lifetime=DEFAULT_LIFETIME):
        self._own_dir = base_dir is None
        self.base_dir = os.path.abspath(base_dir or tempfile.mkdtemp(prefix='bucketfs-%s-' % self.kind))
        os.makedirs(self.base_dir, exist_ok=True)
        self.port = port
        self.lifetime = lifetime
        self._aws_config = None

    @property
    def endpoint(self):
        return 'http://%s:%d' % (self.host, self.port)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return '<%s %s>' % (type(self).__name__, self.endpoint if self.port else 'stopped')

    # ------------------------------------------------------------ clients
    def client_env(self, base=None):
        """An environment for a client of this server: credentials and region
        in AWS_*, nothing inherited that could point it elsewhere (profiles,
        session tokens, CA bundles, instance metadata)."""
        env = dict(os.environ if base is None else base)
        for k in list(env):
            if k.startswith('AWS_'):
                del env[k]
        env.update({'AWS_ACCESS_KEY_ID': self.access_key,
                    'AWS_SECRET_ACCESS_KEY': self.secret_key,
                    'AWS_DEFAULT_REGION': self.region,
                    'AWS_REGION': self.region,
                    'AWS_EC2_METADATA_DISABLED': 'true',
                    'AWS_SHARED_CREDENTIALS_FILE': os.path.join(self.base_dir, 'no-credentials'),
                    'AWS_CONFIG_FILE': self.aws_config_file()})
        return env

    def aws_config_file(self):
        """An aws-cli config: path-style addressing, standard retries (3
        attempts), no pager."""
        if self._aws_config is None:
            path = os.path.join(self.base_dir, 'aws-config')
            with open(path, 'w') as f:
                f.write('[default]\nregion = %s\nretry_mode = standard\nmax_attempts = 3\n'
                        'cli_pager =\ns3 =\n    addressing_style = path\n' % self.region)
            self._aws_config = path
        return self._aws_config

    def aws(self, *args, check=True, input=None, timeout=300, endpoint=None,
            env=None, secret_key=None):
        """Runs `aws --endpoint-url ENDPOINT ARGS...` (text mode). Raises
        AssertionError with aws's stderr when check and it fails."""
        e = self.client_env()
        if secret_key is not None:
            e['AWS_SECRET_ACCESS_KEY'] = secret_key
        if env:
            e.update(env)
        cmd = [aws_bin(), '--endpoint-url', endpoint or self.endpoint] + [str(a) for a in args]
        p = subprocess.run(cmd, env=e, input=input, capture_output=True, text=True,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError('%s failed (exit %d):\n%s%s' % (
                ' '.join(cmd), p.returncode, p.stdout, p.stderr))
        return p

    def request(self, method, path, query=None, body=b'', headers=None,
                secret_key=None, timeout=60):
        """A SigV4-signed request; path is unencoded ('/bucket/key').
        Returns (status, {header_lower: value}, body)."""
        if isinstance(body, str):
            body = body.encode()
        qpath = urllib.parse.quote(path, safe='/-_.~')
        host = '%s:%d' % (self.host, self.port)
        hdrs, cq = sigv4_headers(method, host, qpath, query, body, self.access_key,
                                 secret_key or self.secret_key, self.region, headers)
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            c.request(method, qpath + ('?' + cq if cq else ''), body=body or None,
                      headers=hdrs)
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def create_bucket(self, name):
        for attempt in range(20):
            status, _, body = self.request('PUT', '/' + name)
            if status == 200 or (status == 409 and b'BucketAlreadyOwnedByYou' in body):
                return name
            if status < 500:
                break
            time.sleep(0.5)
        raise RuntimeError('%s: creating bucket %s: HTTP %d %s' % (
            self.kind, name, status, body.decode(errors='replace')))

    def new_bucket(self, prefix='t'):
        """Creates a bucket with a name no one used before."""
        name = ('%s-%d-%d-%s' % (prefix, os.getpid(), next(_bucket_seq),
                                 secrets.token_hex(3))).lower()[:63]
        return self.create_bucket(name)

    def wait_ready(self, proc=None, timeout=30):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError('%s exited with %s before answering' % (self.kind, proc.returncode))
            try:
                c = http.client.HTTPConnection(self.host, self.port, timeout=2)
                c.request('GET', '/')
                c.getresponse().read()
                c.close()
                return
            except OSError as e:
                last = e
                time.sleep(0.1)
        raise RuntimeError('%s on port %s not answering after %ss: %s' % (
            self.kind, self.port, timeout, last))

    def info(self):
        """Shell-style variables describing the running server."""
        return {'S3_KIND': self.kind, 'S3_ENDPOINT': self.endpoint,
                'S3_PORT': str(self.port), 'AWS_ACCESS_KEY_ID': self.access_key,
                'AWS_SECRET_ACCESS_KEY': self.secret_key, 'AWS_DEFAULT_REGION': self.region,
                'AWS_CONFIG_FILE': self.aws_config_file(), 'S3_DIR': self.base_dir}


class S3rver(S3Server):
    """s3rver 3.x under node. Its data lives in base_dir/data."""

    kind = 's3rver'
    access_key = 'S3RVER'
    secret_key = 'S3RVER'

    def __init__(self, base_dir=None, port=None, lifetime=DEFAULT_LIFETIME):
        super().__init__(base_dir, port, lifetime)
        self.proc = None
        self.data_dir = os.path.join(self.base_dir, 'data')

    def start(self):
        if not s3rver_available():
            raise RuntimeError('s3rver not installed (%s); run tools/deps.sh' % S3RVER_JS)
        os.makedirs(self.data_dir, exist_ok=True)
        env = dict(os.environ)
        # s3rver encrypts its ListObjectsV2 continuation tokens with a cipher
        # that OpenSSL 3 keeps in its legacy provider only: without this, the
        # second page of any listing fails.
        env['NODE_OPTIONS'] = (env.get('NODE_OPTIONS', '') + ' --openssl-legacy-provider').strip()
        fixed = self.port
        for attempt in range(5):
            port = fixed or free_port()
            cmd = ['node', S3RVER_JS, '--address', self.host, '--port', str(port),
                   '--directory', self.data_dir, '--silent',
                   # virtual-hosted requests: http://BUCKET.localhost:PORT
                   '--service-endpoint', 'localhost']
            if self.lifetime:
                # timeout runs node as its child and kills it after lifetime s
                cmd = ['timeout', str(self.lifetime)] + cmd
            log = open(os.path.join(self.base_dir, 's3rver.log'), 'ab')
            # its own session: stop() signals exactly this process group
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, start_new_session=True,
                                         cwd=self.base_dir)
            log.close()
            self.port = port
            try:
                self.wait_ready(self.proc)
                self._write_state()
                return self
            except RuntimeError:
                self._kill()
                self.port = fixed
                if fixed or attempt == 4:
                    raise
                # probably lost a race for the free port: try another
        raise RuntimeError('s3rver did not start')

    def _write_state(self):
        with open(os.path.join(self.base_dir, 'server.json'), 'w') as f:
            json.dump({'kind': self.kind, 'pid': self.proc.pid, 'port': self.port}, f)

    def _kill(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def stop(self):
        self._kill()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)


class Swift(S3Server):
    """Swift + s3api through swift-start.sh / swift-stop.sh; state in base_dir."""

    kind = 'swift'
    access_key = 'test:tester'
    secret_key = 'testing'

    def __init__(self, base_dir=None, port=None, lifetime=DEFAULT_LIFETIME):
        super().__init__(base_dir, port, lifetime)
        self.start_seconds = None

    def _env(self):
        env = dict(os.environ, SWIFT_BASE=self.base_dir, SWIFT_LIFETIME=str(self.lifetime or 0))
        if self.port:
            env['SWIFT_PROXY_PORT'] = str(self.port)
        return env

    def start(self):
        if not swift_available():
            raise RuntimeError('swift not installed; run tools/deps.sh')
        t0 = time.monotonic()
        p = subprocess.run(['bash', SWIFT_START], env=self._env(), capture_output=True,
                           text=True, timeout=180)
        if p.returncode != 0:
            subprocess.run(['bash', SWIFT_STOP], env=self._env(), capture_output=True,
                           timeout=60)
            raise RuntimeError('swift-start.sh failed (exit %d):\n%s%s' % (
                p.returncode, p.stdout, p.stderr))
        vals = dict(line.split('=', 1) for line in p.stdout.splitlines() if '=' in line)
        self.port = int(vals['SWIFT_PROXY_PORT'])
        self.start_seconds = time.monotonic() - t0
        self.wait_ready()
        return self

    def stop(self):
        args = ['bash', SWIFT_STOP] + (['--purge'] if self._own_dir else [])
        subprocess.run(args, env=self._env(), capture_output=True, timeout=120)


KINDS = {'s3rver': S3rver, 'swift': Swift}


def _cli_start(a):
    cls = KINDS[a.kind]
    srv = cls(base_dir=a.dir, port=a.port, lifetime=a.lifetime)
    srv.start()
    for b in a.bucket or []:
        srv.create_bucket(b)
    with open(os.path.join(srv.base_dir, 'kind'), 'w') as f:
        f.write(srv.kind + '\n')
    info = srv.info()
    with open(os.path.join(srv.base_dir, 'env'), 'w') as f:
        f.writelines('%s=%s\n' % kv for kv in info.items())
    sys.stdout.writelines('%s=%s\n' % kv for kv in info.items())
    if isinstance(srv, S3rver):
        srv.proc = None  # detach: keep it running after we exit


def _group_alive(pgid):
    """Some process of the group is alive; zombies (which the init here
    reaps only now and then) don't count."""
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % d) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != 'Z':
            return True
    return False


def _cli_stop(a):
    base = os.path.abspath(a.dir)
    try:
        with open(os.path.join(base, 'kind')) as f:
            kind = f.read().strip()
    except FileNotFoundError:
        return
    if kind == 'swift':
        Swift(base_dir=base).stop()
        return
    try:
        with open(os.path.join(base, 'server.json')) as f:
            pid = json.load(f)['pid']
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            cmdline = f.read().replace(b'\0', b' ').decode(errors='replace')
    except (OSError, ValueError, KeyError):
        return
    if os.path.join(base, 'data') not in cmdline:
        return  # not ours (any more)
    os.killpg(pid, signal.SIGTERM)
    for _ in range(100):
        if not _group_alive(pid):
            break
        time.sleep(0.1)
    else:
        os.killpg(pid, signal.SIGKILL)
    print('stopped %s (pid %d)' % (kind, pid), file=sys.stderr)


def main(argv=None):
    ap = argparse.ArgumentParser(description='start/stop a local S3 server')
    sub = ap.add_subparsers(dest='cmd', required=True)
    s = sub.add_parser('start')
    s.add_argument('kind', choices=sorted(KINDS))
    s.add_argument('--dir', required=True)
    s.add_argument('--port', type=int)
    s.add_argument('--bucket', action='append')
    s.add_argument('--lifetime', type=int, default=DEFAULT_LIFETIME,
                   help='seconds until it stops by itself (0: never)')
    t = sub.add_parser('stop')
    t.add_argument('--dir', required=True)
    a = ap.parse_args(argv)
    if a.cmd == 'start':
        _cli_start(a)
    else:
        _cli_stop(a)
    return 0


if __name__ == '__main__':
    sys.exit(main())
