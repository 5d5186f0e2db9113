"""pytest fixtures for the local S3 servers and the fault-injecting proxy.

  s3rver          session: an s3rver (tests/servers/servers.py S3rver)
  swift           session: Swift + s3api (Swift); skipped only when the swift
                  packages are not installed, and never skipped when CI is set
  s3server        session, parametrized: s3rver, then swift. Limit with
                  BUCKETFS_S3SERVERS=s3rver (comma-separated kinds).
  bucket          a fresh, empty bucket on s3server (unique name)
  aws             s3server.aws: aws(*args, check=True, endpoint=None, ...)
                  runs `aws --endpoint-url ... ARGS` with credentials, region,
                  path-style and nothing inherited from the machine's AWS_*
  faultproxy      a FaultProxy in front of s3server, stopped after the test
  make_faultproxy factory: make_faultproxy(server, **settings)

Sanitizer reports (autouse): the session's environment sends any ASan, LSan
or TSan report of a process the tests start to <basetemp>/sanitizer/
report.<pid> and makes a UBSan report end the process with status 1
(tests/mount.py points each Mount's daemon at its own directory instead and
checks there and in its log at unmount); a test after which a new report
file exists fails with it, and so does the session if one appears later.

Servers expose endpoint, host, port, access_key, secret_key, region,
client_env(), new_bucket(), create_bucket(), request() and aws(); see
tests/servers/servers.py and tests/servers/faultproxy.py.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mount import format_reports, sanitizer_env, sanitizer_reports  # noqa: E402
from servers import FaultProxy, S3rver, Swift, swift_available  # noqa: E402

ALL_KINDS = ('s3rver', 'swift')
SERVER_KINDS = [k.strip() for k in
                os.environ.get('BUCKETFS_S3SERVERS', ','.join(ALL_KINDS)).split(',')
                if k.strip() in ALL_KINDS]


@pytest.fixture(scope='session', autouse=True)
def sanitizer_log(tmp_path_factory):
    d = tmp_path_factory.mktemp('sanitizer')
    prefix = str(d / 'report')
    saved = {k: os.environ.get(k) for k in ('ASAN_OPTIONS', 'UBSAN_OPTIONS', 'TSAN_OPTIONS')}
    os.environ.update(sanitizer_env(prefix, halt_on_ub=True))
    yield prefix
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    reports = sanitizer_reports(prefix)
    assert not reports, 'sanitizer reports of the session:\n' + format_reports(reports)


@pytest.fixture(autouse=True)
def no_sanitizer_report(sanitizer_log):
    before = {p for p, _ in sanitizer_reports(sanitizer_log)}
    yield
    new = [(p, t) for p, t in sanitizer_reports(sanitizer_log) if p not in before]
    assert not new, 'a process of this test left sanitizer reports:\n' + format_reports(new)


@pytest.fixture(scope='session')
def s3rver():
    srv = S3rver().start()
    yield srv
    srv.stop()


@pytest.fixture(scope='session')
def swift():
    if not swift_available():
        if os.environ.get('CI'):
            pytest.fail('swift packages missing in CI: tools/deps.sh installs them')
        pytest.skip('swift packages not installed (run tools/deps.sh)')
    srv = Swift().start()
    yield srv
    srv.stop()


@pytest.fixture(scope='session', params=SERVER_KINDS)
def s3server(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def bucket(s3server):
    return s3server.new_bucket()


@pytest.fixture
def aws(s3server):
    return s3server.aws


@pytest.fixture
def make_faultproxy():
    proxies = []

    def make(server, **settings):
        settings.setdefault('max_lifetime', 600)
        p = FaultProxy(server.host, server.port, **settings).start()
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        p.stop()


@pytest.fixture
def faultproxy(make_faultproxy, s3server):
    return make_faultproxy(s3server)
