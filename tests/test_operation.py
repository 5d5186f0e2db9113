"""Day-to-day operation (issue 5): the example files, daemon mode and its
log, fstab through mount(8) and mount.fuse3, every mount-time error with its
one line, EC2 instance-role credentials from a fake IMDSv2 on loopback, the
region's order of precedence, allow_other and default_permissions.
"""

import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

from mount import bucketfs_bin, bulk_put
from test_backup import Daemon

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLES = os.path.join(ROOT, 'tools', 'examples')


def closed_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]   # nothing listens once closed


def bucketfs_procs(mp):
    p = subprocess.run(['pgrep', '-f', 'bucketfs .* %s( |$)' % re.escape(mp)],
                       capture_output=True, text=True)
    return p.stdout.split()


# ---------------------------------------------------------------- fake servers

class _Fake(http.server.BaseHTTPRequestHandler):
    """IMDSv2 (token first) serving role credentials, or an S3 endpoint that
    answers everything with 403 AccessDenied."""
    protocol_version = 'HTTP/1.1'

    def log_message(self, *a):
        pass

    def reply(self, status, body, ctype='text/plain'):
        data = body.encode()
        self.send_response(status)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(data)

    def handle_any(self):
        st = self.server.state
        with st['lock']:
            st['log'].append((self.command, self.path))
        if st['mode'] == 'denied':
            n = int(self.headers.get('Content-Length') or 0)
            self.rfile.read(n)
            return self.reply(403, '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
                              'AccessDenied</Code><Message>Access Denied</Message></Error>',
                              'application/xml')
        if self.command == 'PUT' and self.path == '/latest/api/token':
            if not self.headers.get('X-aws-ec2-metadata-token-ttl-seconds'):
                return self.reply(400, 'missing ttl')
            return self.reply(200, 'imds-token')
        if self.headers.get('X-aws-ec2-metadata-token') != 'imds-token':
            return self.reply(401, '')
        base = '/latest/meta-data/iam/security-credentials/'
        if self.path == base:
            return self.reply(200, 'bucketfs-role')
        if self.path == base + 'bucketfs-role':
            with st['lock']:
                st['creds'] += 1
            exp = time.strftime('%Y-%m-%dT%H:%M:%SZ',
                                time.gmtime(int(time.time()) + st['lifetime']))
            return self.reply(200, json.dumps({
                'Code': 'Success', 'Type': 'AWS-HMAC', 'AccessKeyId': st['key'],
                'SecretAccessKey': st['secret'], 'Token': 'role-T0K3N-%d' % st['creds'],
                'Expiration': exp}))
        if self.path == '/latest/meta-data/placement/region':
            return self.reply(200, 'eu-fake-1')
        self.reply(404, 'not found')

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = handle_any


@pytest.fixture
def fake_server():
    servers = []

    def start(mode, **state):
        srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Fake)
        srv.daemon_threads = True
        srv.state = dict(mode=mode, lock=threading.Lock(), log=[], creds=0, lifetime=3600,
                         key='', secret='')
        srv.state.update(state)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        srv.url = 'http://127.0.0.1:%d' % srv.server_address[1]
        return srv
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def bare_env(tmp_path, **extra):
    """No AWS_* at all, an empty HOME, no instance metadata service."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('AWS_')}
    home = tmp_path / 'home'
    home.mkdir(exist_ok=True)
    env['HOME'] = str(home)
    env['AWS_EC2_METADATA_SERVICE_ENDPOINT'] = 'http://127.0.0.1:%d' % closed_port()
    env.update(extra)
    return env


# ---------------------------------------------------------------- examples, --help

def test_example_units_and_files_are_valid(tmp_path):
    units = [f for f in os.listdir(EXAMPLES) if f.endswith(('.service', '.timer', '.mount'))]
    assert sorted(units) == ['bucketfs-backup.service', 'bucketfs-backup.timer',
                             'mnt-mybucket.mount']
    if shutil.which('systemd-analyze'):
        d = tmp_path / 'units'
        d.mkdir()
        for u in units:
            shutil.copy(os.path.join(EXAMPLES, u), d / u)
        p = subprocess.run(['systemd-analyze', 'verify', '--man=no'] +
                           [str(d / u) for u in sorted(units)],
                           capture_output=True, text=True, timeout=120)
        # warnings (unknown keys, ...) count too
        assert p.returncode == 0 and not p.stderr.strip() and not p.stdout.strip(), \
            p.stdout + p.stderr
    else:
        print('systemd-analyze not installed: units only parsed')
    # the mount unit and the fstab line say the same
    unit = open(os.path.join(EXAMPLES, 'mnt-mybucket.mount')).read()
    mnt = dict(re.findall(r'^(What|Where|Type|Options)=(.*)$', unit, re.M))
    fstab = [ln.split() for ln in open(os.path.join(EXAMPLES, 'fstab'))
             if ln.strip() and not ln.startswith('#')]
    assert len(fstab) == 1 and len(fstab[0]) == 6, fstab
    what, where, typ, opts, freq, passno = fstab[0]
    assert (typ, freq, passno) == ('fuse.bucketfs', '0', '0')
    assert '_netdev' in opts.split(',')
    assert mnt == {'What': what, 'Where': where, 'Type': typ, 'Options': opts}
    # bucketfs accepts the options of every fstab line, commented ones too:
    # it gets as far as the mount point check
    lines = [ln.lstrip('#').split() for ln in open(os.path.join(EXAMPLES, 'fstab'))]
    lines = [f for f in lines if len(f) == 6 and f[2] == 'fuse.bucketfs']
    assert len(lines) >= 2
    for f in lines:
        p = subprocess.run([bucketfs_bin(), f[0], str(tmp_path / 'absent'), '-o', f[3]],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 1
        assert p.stderr == 'bucketfs: mount point %s does not exist\n' % (tmp_path / 'absent')


def test_help_lists_every_option_with_its_default():
    p = subprocess.run([bucketfs_bin(), '--help'], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stderr == ''
    text = p.stdout
    # each option's entry runs to the next "-o" line
    entries = {}
    for m in re.finditer(r'^    -o (\w+)(.*?)(?=^    -|^\S|\Z)', text, re.M | re.S):
        entries[m.group(1)] = m.group(2)
    design = ['url', 'endpoint', 'use_path_request_style', 'passwd_file', 'profile', 'uid',
              'gid', 'umask', 'allow_other', 'ro', 'multipart_size', 'parallel_count',
              'retries', 'connect_timeout', 'readwrite_timeout', 'dbglevel', 'use_sse',
              'cache_dir', 'cache_size', 'list_ttl', 'small_file_size', 'logfile', 'region',
              'default_permissions', 'nonempty']
    missing = [o for o in design if o not in entries]
    assert not missing, missing
    # an option with a value of its own shows its default (aliases and
    # ignored s3fs options say what they are instead)
    no_default = [o for o, e in entries.items()
                  if '(default: ' not in e and 'same as' not in e and 'ignored' not in e]
    assert not no_default, no_default
    p = subprocess.run([bucketfs_bin(), '--version'], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0
    assert re.match(r'bucketfs \d+\.\d+\.\d+\n', p.stdout), p.stdout


# ---------------------------------------------------------------- mount-time errors

def run_mount(bucket, mp, opts, env, timeout=120):
    """bucketfs in daemon mode; returns (exit code, stderr, seconds)."""
    t0 = time.monotonic()
    p = subprocess.run([bucketfs_bin(), bucket, mp, '-o', opts], env=env,
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stderr, time.monotonic() - t0


def test_mount_time_errors(s3rver, swift, fake_server, tmp_path):
    b = s3rver.new_bucket()
    mp = tmp_path / 'mnt'
    mp.mkdir()
    denied = fake_server('denied')
    file_mp = tmp_path / 'afile'
    file_mp.write_text('x')
    full = tmp_path / 'full'
    full.mkdir()
    (full / 'x').write_text('x')
    base = 'use_path_request_style,cache_dir=%s,retries=1' % (tmp_path / 'cache')
    env3 = s3rver.client_env()
    imds = 'http://127.0.0.1:%d' % closed_port()
    cases = [
        # (name, bucket, mount point, url, extra options, env, expected in the line)
        ('bucket does not exist', 'no-such-bucket-x', mp, s3rver.endpoint, '', env3,
         "bucket 'no-such-bucket-x' does not exist at %s" % s3rver.endpoint),
        ('access denied', b, mp, denied.url, '', env3,
         "access denied to bucket '%s' (credentials from environment)" % b),
        ('bad credentials (swift: bad secret)', swift.new_bucket(), mp, swift.endpoint, '',
         dict(swift.client_env(), AWS_SECRET_ACCESS_KEY='wrong-S3CR3T'),
         'the credentials from environment were refused: HTTP 403 SignatureDoesNotMatch'),
        ('bad credentials (unknown key)', b, mp, s3rver.endpoint, '',
         env3 | {'AWS_ACCESS_KEY_ID': 'NOSUCHKEY'},
         'the credentials from environment were refused: HTTP 403 InvalidAccessKeyId'),
        ('no credentials', b, mp, s3rver.endpoint, '',
         bare_env(tmp_path, AWS_EC2_METADATA_SERVICE_ENDPOINT=imds),
         'no credentials found (looked in: passwd_file option, environment (AWS_ACCESS_KEY_ID), '
         'profile default in %s/home/.aws/credentials and %s/home/.aws/config, '
         '%s/home/.passwd-s3fs, /etc/passwd-s3fs, ECS container endpoint, '
         'EC2 instance metadata %s)' % (tmp_path, tmp_path, tmp_path, imds)),
        ('endpoint unreachable', b, mp, 'http://127.0.0.1:%d' % closed_port(), '', env3,
         'cannot reach http://127.0.0.1:'),
        ('mount point missing', b, tmp_path / 'nope', s3rver.endpoint, '', env3,
         'mount point %s does not exist' % (tmp_path / 'nope')),
        ('mount point is a file', b, file_mp, s3rver.endpoint, '', env3,
         'mount point %s is not a directory' % file_mp),
        ('mount point not empty', b, full, s3rver.endpoint, '', env3,
         'mount point %s is not empty (use -o nonempty to mount over it)' % full),
        ('bad option value', b, mp, s3rver.endpoint, ',list_ttl=10m', env3,
         "invalid value '10m' for option 'list_ttl'"),
        ('bad umask', b, mp, s3rver.endpoint, ',umask=0999', env3,
         "invalid value '0999' for option 'umask'"),
        ('unknown option', b, mp, s3rver.endpoint, ',list_tll=5', env3,
         "unknown option 'list_tll=5'"),
        ('log file cannot be opened', b, mp, s3rver.endpoint,
         ',logfile=%s/no/such/dir/log' % tmp_path, env3, 'cannot open log file'),
    ]
    if os.path.exists('/etc/passwd-s3fs'):
        cases = [c for c in cases if c[0] != 'no credentials']
    failed, errs = [], []
    for name, bkt, where, url, extra, env, want in cases:
        rc, err, secs = run_mount(bkt, str(where), 'url=%s,%s%s' % (url, base, extra), env)
        print('%-38s %.2f s  exit %d  %s' % (name, secs, rc, err.strip()))
        errs.append(err)
        lines = err.splitlines()
        ok = (rc == 1 and len(lines) == 1 and lines[0].startswith('bucketfs: ')
              and want in lines[0] and secs < 30)
        if not ok:
            failed.append((name, rc, err, want))
        assert not os.path.ismount(str(where)) if os.path.isdir(str(where)) else True
        assert not bucketfs_procs(str(where)), name
    assert not failed, failed
    # the secret never reaches the line
    assert 'S3CR3T' not in ''.join(errs)
    # nonempty: the same directory mounts
    d = Daemon(s3rver, b, tmp_path, opts={'nonempty': None})
    d.mp = str(full)
    d.mount()
    assert os.listdir(d.mp) == []
    d.unmount()
    assert os.listdir(str(full)) == ['x']


# ---------------------------------------------------------------- daemon mode, logs

def test_daemon_logs_to_logfile_and_reopens_on_sighup(s3rver, tmp_path):
    b = s3rver.new_bucket()
    bulk_put(s3rver, b, {'a/f.txt': b'hello\n'})
    d = Daemon(s3rver, b, tmp_path)
    d.mount()
    try:
        log = open(d.log).read()
        assert re.search(r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} bucketfs\[%d\] info: mounted %s '
                         r'on %s \(credentials from environment' % (d.pid, b, d.mp), log, re.M), log
        assert 'S3RVER' not in log.replace('access key id S3RVER', '')   # no secret
        os.rename(d.log, d.log + '.1')
        os.kill(d.pid, signal.SIGHUP)
        time.sleep(0.2)
        # SIGHUP did not end the mount
        assert open(os.path.join(d.mp, 'a', 'f.txt')).read() == 'hello\n'
        assert os.path.ismount(d.mp)
        d.unmount()
    finally:
        d.kill()
    new = open(d.log).read()
    old = open(d.log + '.1').read()
    assert 'stats at unmount' in new and 'stats at unmount' not in old
    assert os.stat(d.log).st_mode & 0o777 == 0o600
    # the default level (warn) writes nothing for a mount that went well
    d2 = Daemon(s3rver, b, tmp_path / 'quiet', opts={'dbglevel': None})
    del d2.opts['dbglevel']
    os.makedirs(d2.mp, exist_ok=True)
    p = subprocess.run(d2.argv(), env=d2.env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stderr == ''
    assert os.listdir(d2.mp) == ['a']
    pids = bucketfs_procs(d2.mp)
    subprocess.run(['fusermount3', '-u', d2.mp], check=True)
    deadline = time.monotonic() + 30
    while bucketfs_procs(d2.mp) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(pids) == 1 and not bucketfs_procs(d2.mp)
    assert open(d2.log).read() == ''


# ---------------------------------------------------------------- fstab

def test_fstab_mount_and_umount(s3rver, tmp_path):
    """`mount -T FSTAB MOUNTPOINT` and `umount MOUNTPOINT` as root, through
    mount(8) and mount.fuse3 with type fuse.bucketfs.  mount(8) runs helpers
    without PATH (and HOME), so the binary must be in a system directory:
    in a private mount namespace, /usr/local/sbin gets a bucketfs symlink."""
    if os.geteuid() != 0:
        pytest.skip('needs root')
    b = s3rver.new_bucket()
    bulk_put(s3rver, b, {'dir/file.txt': b'from fstab\n', 'top': b'x'})
    mp = tmp_path / 'mnt'
    mp.mkdir()
    bindir = tmp_path / 'sbin'
    bindir.mkdir()
    os.symlink(bucketfs_bin(), bindir / 'bucketfs')
    log = tmp_path / 'fstab.log'
    fstab = tmp_path / 'fstab'
    fstab.write_text(
        '# test fstab\n%s  %s  fuse.bucketfs  _netdev,nofail,url=%s,use_path_request_style,'
        'cache_dir=%s,logfile=%s,dbglevel=info,allow_other  0 0\n' % (
            b, mp, s3rver.endpoint, tmp_path / 'cache', log))
    script = '''set -e
mount --bind {bindir} /usr/local/sbin
mount -T {fstab} {mp}
findmnt -n -o FSTYPE,SOURCE,OPTIONS {mp}
cat {mp}/dir/file.txt
ls {mp}
umount {mp}
for i in $(seq 100); do
  pgrep -f "[b]ucketfs {b} {mp}" >/dev/null || break; sleep 0.1
done
pgrep -f "[b]ucketfs {b} {mp}" && echo still running || echo daemon gone
'''.format(bindir=bindir, fstab=fstab, mp=mp, b=b)
    env = s3rver.client_env()
    p = subprocess.run(['unshare', '-m', '--propagation', 'private', 'sh', '-c', script],
                       env=env, capture_output=True, text=True, timeout=120)
    if p.returncode != 0 and 'unshare failed' in p.stderr:
        pytest.skip('no mount namespaces here: ' + p.stderr)
    print(p.stdout, p.stderr, open(log).read() if log.exists() else '(no log)')
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    fstype, source, options = out[0].split()
    assert (fstype, source) == ('fuse.bucketfs', b)
    assert 'allow_other' in options.split(',') and 'default_permissions' in options.split(',')
    assert out[1] == 'from fstab'
    assert out[2:4] == ['dir', 'top']
    assert out[-1] == 'daemon gone'
    text = open(log).read()
    assert ' info: mounted %s on %s' % (b, mp) in text and 'stats at unmount' in text
    assert ' err: ' not in text
    assert not os.path.ismount(str(mp))


# ---------------------------------------------------------------- EC2 instance role

def test_ec2_instance_role_through_imdsv2(s3server, fake_server, tmp_path):
    """Swift checks the signature, and the session token signed with it;
    its s3api wants region us-east-1, which then comes from AWS_REGION."""
    srv = s3server
    imds = fake_server('imds', key=srv.access_key, secret=srv.secret_key, lifetime=3)
    b = srv.new_bucket()
    bulk_put(srv, b, {'one': b'1', 'sub/two': b'22'})
    env = bare_env(tmp_path, AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url)
    region = 'eu-fake-1'     # from IMDS too
    if srv.kind == 'swift':
        env['AWS_REGION'] = region = 'us-east-1'
    d = Daemon(srv, b, tmp_path, opts={'list_ttl': 1}, env=None)
    d.env = env
    d.mount()
    try:
        log = open(d.log).read()
        assert 'region %s ' % region in log, log
        assert 'credentials from EC2 instance role bucketfs-role' in log, log
        assert sorted(os.listdir(d.mp)) == ['one', 'sub']
        first = imds.state['creds']
        # the credentials expire (3 s): they are fetched again, the mount works on
        time.sleep(3.5)
        assert open(os.path.join(d.mp, 'sub', 'two')).read() == '22'
        assert sorted(os.listdir(d.mp)) == ['one', 'sub']
        assert imds.state['creds'] > first, imds.state['creds']
        # IMDSv2: a token before any metadata
        assert imds.state['log'][0] == ('PUT', '/latest/api/token'), imds.state['log'][:3]
        d.unmount()
    finally:
        d.kill()
    text = open(d.log).read()
    assert 'T0K3N' not in text and srv.secret_key + '\n' not in text


def test_region_order_option_profile_env_imds(s3rver, fake_server, tmp_path):
    """option > profile > AWS_REGION > AWS_DEFAULT_REGION > IMDS, seen in the
    startup log line (s3rver does not check the signing region)."""
    b = s3rver.new_bucket()
    cfg = tmp_path / 'aws-config'
    cfg.write_text('[default]\nregion = profile-1\n')
    imds = fake_server('imds', key=s3rver.access_key, secret=s3rver.secret_key)
    creds = {'AWS_ACCESS_KEY_ID': s3rver.access_key, 'AWS_SECRET_ACCESS_KEY': s3rver.secret_key}
    all_env = dict(creds, AWS_CONFIG_FILE=str(cfg), AWS_REGION='env-1',
                   AWS_DEFAULT_REGION='default-1')
    cases = [
        ('option', {'region': 'option-1'}, all_env, 'option-1'),
        ('profile', {}, all_env, 'profile-1'),
        ('AWS_REGION', {}, dict(creds, AWS_REGION='env-1', AWS_DEFAULT_REGION='default-1'),
         'env-1'),
        ('AWS_DEFAULT_REGION', {}, dict(creds, AWS_DEFAULT_REGION='default-1'), 'default-1'),
        ('IMDS', {}, {'AWS_EC2_METADATA_SERVICE_ENDPOINT': imds.url}, 'eu-fake-1'),
        ('IMDS, AWS_REGION wins', {}, {'AWS_EC2_METADATA_SERVICE_ENDPOINT': imds.url,
                                       'AWS_REGION': 'env-1'}, 'env-1'),
    ]
    for i, (name, opts, extra, want) in enumerate(cases):
        d = Daemon(s3rver, b, tmp_path / ('r%d' % i), opts=opts)
        d.env = bare_env(tmp_path, **extra)
        d.mount()
        try:
            line = [ln for ln in open(d.log) if ' s3: endpoint ' in ln][-1]
            print('%-22s %s' % (name, line.split(' s3: ', 1)[1].strip()))
            assert ' region %s ' % want in line, (name, line)
            d.unmount()
        finally:
            d.kill()


# ---------------------------------------------------------------- permissions

def test_allow_other_and_default_permissions(s3rver, tmp_path):
    if os.geteuid() != 0 or not shutil.which('runuser'):
        pytest.skip('needs root and runuser')
    b = s3rver.new_bucket()
    for key, mode in (('secret', '33152'), ('public', '33188')):   # 0600, 0644
        status, _, body = s3rver.request('PUT', '/%s/%s' % (b, key), body=key + '\n',
                                         headers={'x-amz-meta-mode': mode,
                                                  'x-amz-meta-uid': '0', 'x-amz-meta-gid': '0'})
        assert status == 200, body
    # a mount point other users can reach (pytest's tmp_path is 0700)
    top = tempfile.mkdtemp(prefix='bucketfs-perm-', dir='/tmp')  # TMPDIR may be 0700
    os.chmod(top, 0o755)

    def as_nobody(*cmd):
        return subprocess.run(['runuser', '-u', 'nobody', '--'] + list(cmd),
                              capture_output=True, text=True, timeout=30)
    try:
        for opts in ({}, {'allow_other': None}):
            d = Daemon(s3rver, b, top, opts=dict(opts, cache_dir=str(tmp_path / 'cache'),
                                                 logfile=str(tmp_path / 'perm.log')))
            d.mount()
            try:
                assert open(os.path.join(d.mp, 'secret')).read() == 'secret\n'   # root
                p = as_nobody('ls', d.mp)
                if not opts:
                    # without allow_other, no other user gets in at all
                    assert p.returncode != 0 and 'Permission denied' in p.stderr, p
                else:
                    assert p.returncode == 0 and p.stdout.split() == ['public', 'secret'], p
                    p = as_nobody('cat', os.path.join(d.mp, 'public'))
                    assert p.returncode == 0 and p.stdout == 'public\n', p
                    # default_permissions (implied): 0600 of uid 0 is not for nobody
                    p = as_nobody('cat', os.path.join(d.mp, 'secret'))
                    assert p.returncode != 0 and 'Permission denied' in p.stderr, p
                d.unmount()
            finally:
                d.kill()
    finally:
        shutil.rmtree(top, ignore_errors=True)
