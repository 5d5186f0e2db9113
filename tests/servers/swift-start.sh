#!/bin/bash
# Starts a single-node, single-replica OpenStack Swift (Debian 12's 2.30) with
# the s3api middleware in front of tempauth, on 127.0.0.1 only: a second S3
# implementation for the integration tests, one that verifies SigV4 signatures
# and does multipart uploads through SLO.
#
#   usage: swift-start.sh [BUCKET...]
#   env:   SWIFT_BASE        state dir (configs, rings, data, logs, pids);
#                            default /tmp/bucketfs-swift
#          SWIFT_PROXY_PORT, SWIFT_ACCT_PORT, SWIFT_CONT_PORT, SWIFT_OBJ_PORT
#                            default: the ports of the last start from this
#                            SWIFT_BASE, else free ports picked now
#          SWIFT_LIFETIME    seconds after which every server stops by itself
#                            (default 5400; 0 = no limit)
#   S3:    http://127.0.0.1:$SWIFT_PROXY_PORT, path-style, region us-east-1,
#          access key test:tester, secret testing
#   stdout: shell-style lines SWIFT_ENDPOINT=... SWIFT_PROXY_PORT=... (also
#          saved in $SWIFT_BASE/env); everything else goes to stderr.
#
# Idempotent: a second run keeps the data, rewrites the configs and starts only
# servers not already running. Stop with swift-stop.sh (same SWIFT_BASE): it
# kills only the process groups whose ids were saved here.
# Packages: swift swift-proxy swift-account swift-container swift-object
# (tools/deps.sh installs them). No memcached is needed.
set -euo pipefail

BASE=${SWIFT_BASE:-/tmp/bucketfs-swift}
LIFETIME=${SWIFT_LIFETIME:-5400}
IP=127.0.0.1
ETC=$BASE/etc RUN=$BASE/run LOG=$BASE/log DEVS=$BASE/srv/node

log() { echo "[swift] $*" >&2; }

for b in swift-proxy-server swift-account-server swift-container-server swift-object-server swift-ring-builder; do
  command -v "$b" >/dev/null || { log "ERROR: $b not found; run tools/deps.sh"; exit 1; }
done
if ! grep -Eq '^\s*swift_hash_path_(suffix|prefix)\s*=\s*\S' /etc/swift/swift.conf 2>/dev/null; then
  log "ERROR: /etc/swift/swift.conf has no swift_hash_path_*; run tools/deps.sh"; exit 1
fi

mkdir -p "$ETC" "$RUN" "$LOG" "$DEVS/d1"
BASE=$(cd "$BASE" && pwd)
ETC=$BASE/etc RUN=$BASE/run LOG=$BASE/log DEVS=$BASE/srv/node

# ---------------------------------------------------------------- ports
if [ -f "$BASE/env" ]; then
  # shellcheck disable=SC1091
  prev_proxy=$(sed -n 's/^SWIFT_PROXY_PORT=//p' "$BASE/env")
  prev_acct=$(sed -n 's/^SWIFT_ACCT_PORT=//p' "$BASE/env")
  prev_cont=$(sed -n 's/^SWIFT_CONT_PORT=//p' "$BASE/env")
  prev_obj=$(sed -n 's/^SWIFT_OBJ_PORT=//p' "$BASE/env")
fi
# Free ports: bind four sockets to port 0 at once so they differ.
read -r f1 f2 f3 f4 < <(/usr/bin/python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
PROXY_PORT=${SWIFT_PROXY_PORT:-${prev_proxy:-$f1}}
ACCT_PORT=${SWIFT_ACCT_PORT:-${prev_acct:-$f2}}
CONT_PORT=${SWIFT_CONT_PORT:-${prev_cont:-$f3}}
OBJ_PORT=${SWIFT_OBJ_PORT:-${prev_obj:-$f4}}

# ---------------------------------------------------------------- configs
server_conf() {  # $1 = kind (account|container|object), $2 = port
  cat <<EOF
[DEFAULT]
bind_ip = $IP
bind_port = $2
workers = 1
user = root
swift_dir = $ETC
devices = $DEVS
mount_check = false
log_level = INFO

[pipeline:main]
pipeline = healthcheck $1-server

[app:$1-server]
use = egg:swift#$1

[filter:healthcheck]
use = egg:swift#healthcheck
EOF
}
server_conf account "$ACCT_PORT" > "$ETC/account-server.conf"
server_conf container "$CONT_PORT" > "$ETC/container-server.conf"
server_conf object "$OBJ_PORT" > "$ETC/object-server.conf"

# s3api must come before tempauth (it turns the S3 signature into something
# tempauth checks against user_test_tester's key); slo gives multipart uploads.
cat > "$ETC/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = $IP
bind_port = $PROXY_PORT
workers = 1
user = root
swift_dir = $ETC
log_level = INFO

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl ratelimit s3api tempauth copy container-quotas account-quotas slo dlo versioned_writes symlink proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:s3api]
use = egg:swift#s3api
location = us-east-1
# virtual-hosted requests: http://BUCKET.localhost:PORT
storage_domain = localhost

[filter:tempauth]
use = egg:swift#tempauth
user_admin_admin = admin .admin .reseller_admin
user_test_tester = testing .admin

# No memcached runs: SigV4 through s3api + tempauth works without one.
[filter:cache]
use = egg:swift#memcache

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:tempurl]
use = egg:swift#tempurl
[filter:ratelimit]
use = egg:swift#ratelimit
[filter:copy]
use = egg:swift#copy
[filter:container-quotas]
use = egg:swift#container_quotas
[filter:account-quotas]
use = egg:swift#account_quotas
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
[filter:versioned_writes]
use = egg:swift#versioned_writes
[filter:symlink]
use = egg:swift#symlink
EOF

# ---------------------------------------------------------------- rings
# One replica on one device; rebuilt when missing or when the port changed.
for spec in account:$ACCT_PORT container:$CONT_PORT object:$OBJ_PORT; do
  r=${spec%%:*} port=${spec##*:}
  if [ ! -f "$ETC/$r.ring.gz" ] || ! grep -qx "$port" "$ETC/$r.port" 2>/dev/null; then
    rm -f "$ETC/$r.builder" "$ETC/$r.ring.gz"
    swift-ring-builder "$ETC/$r.builder" create 10 1 1 >/dev/null
    swift-ring-builder "$ETC/$r.builder" add "r1z1-$IP:$port/d1" 100 >/dev/null
    swift-ring-builder "$ETC/$r.builder" rebalance >/dev/null || [ $? -eq 1 ]
    echo "$port" > "$ETC/$r.port"
  fi
done

# ---------------------------------------------------------------- start
running() {  # $1 = name: the saved process-group leader still runs our server
  local f=$RUN/$1.pid pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$ETC/$1.conf"
}
port_busy() { ss -Hltn "sport = :$1" | grep -q .; }

SERVERS="account-server:$ACCT_PORT container-server:$CONT_PORT object-server:$OBJ_PORT proxy-server:$PROXY_PORT"
t0=$(date +%s.%N)
for spec in $SERVERS; do
  name=${spec%%:*} port=${spec##*:}
  if running "$name"; then log "$name already running (pgid $(cat "$RUN/$name.pid"))"; continue; fi
  if port_busy "$port"; then log "ERROR: $IP:$port already in use"; exit 1; fi
  # setsid: its own session and process group (pgid = the saved pid), which
  # its forked workers share, for swift-stop.sh. -v: log to stderr (no syslog
  # here), kept in $LOG.
  setsid "/usr/bin/swift-$name" "$ETC/$name.conf" -v </dev/null >>"$LOG/$name.log" 2>&1 &
  echo $! > "$RUN/$name.pid"
  log "started $name (pgid $!) on $IP:$port"
done

# Watchdog: runs swift-stop.sh after SWIFT_LIFETIME seconds, so nothing
# outlives a crashed or killed test run. swift-stop.sh ends it too.
wd=$RUN/watchdog.pid
if [ "$LIFETIME" != 0 ] && ! { [ -f "$wd" ] && grep -q swift-watchdog "/proc/$(cat "$wd")/cmdline" 2>/dev/null; }; then
  SWIFT_BASE=$BASE setsid bash -c 'sleep "$2"; exec "$3"' swift-watchdog "$BASE" "$LIFETIME" \
    "$(cd "$(dirname "$0")" && pwd)/swift-stop.sh" </dev/null >>"$LOG/watchdog.log" 2>&1 &
  echo $! > "$wd"
fi

# ---------------------------------------------------------------- health
for spec in $SERVERS; do
  name=${spec%%:*} port=${spec##*:}
  for i in $(seq 1 200); do
    [ "$(curl -s --max-time 2 "http://$IP:$port/healthcheck" 2>/dev/null)" = OK ] && break
    running "$name" || { log "ERROR: $name died; see $LOG/$name.log"; tail -20 "$LOG/$name.log" >&2; exit 1; }
    [ "$i" = 200 ] && { log "ERROR: $name not healthy after 60 s"; exit 1; }
    sleep 0.3
  done
done
log "healthy after $(/usr/bin/python3 -c "import sys; print('%.1f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$t0" "$(date +%s.%N)") s"

cat > "$BASE/env" <<EOF
SWIFT_ENDPOINT=http://$IP:$PROXY_PORT
SWIFT_PROXY_PORT=$PROXY_PORT
SWIFT_ACCT_PORT=$ACCT_PORT
SWIFT_CONT_PORT=$CONT_PORT
SWIFT_OBJ_PORT=$OBJ_PORT
SWIFT_ACCESS_KEY=test:tester
SWIFT_SECRET_KEY=testing
SWIFT_REGION=us-east-1
EOF

# ---------------------------------------------------------------- buckets
# A SigV4-signed PUT per bucket (stdlib python): also proves s3api + tempauth
# accept signatures end to end. The first request after start can take a few
# seconds (account autocreate), hence the retries.
for bucket in "$@"; do
  /usr/bin/python3 - "$IP:$PROXY_PORT" "$bucket" <<'PY'
import datetime, hashlib, hmac, http.client, sys, time
host, bucket = sys.argv[1], sys.argv[2]
ak, sk, region = 'test:tester', 'testing', 'us-east-1'
def put():
    now = datetime.datetime.now(datetime.timezone.utc)
    amzdate, day = now.strftime('%Y%m%dT%H%M%SZ'), now.strftime('%Y%m%d')
    ph = hashlib.sha256(b'').hexdigest()
    hdrs = {'host': host, 'x-amz-content-sha256': ph, 'x-amz-date': amzdate}
    sh = ';'.join(sorted(hdrs))
    creq = '\n'.join(['PUT', '/' + bucket, '',
                      ''.join('%s:%s\n' % (k, hdrs[k]) for k in sorted(hdrs)), sh, ph])
    scope = '%s/%s/s3/aws4_request' % (day, region)
    sts = '\n'.join(['AWS4-HMAC-SHA256', amzdate, scope,
                     hashlib.sha256(creq.encode()).hexdigest()])
    k = ('AWS4' + sk).encode()
    for m in (day, region, 's3', 'aws4_request'):
        k = hmac.new(k, m.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
    hdrs['Authorization'] = ('AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, '
                             'Signature=%s' % (ak, scope, sh, sig))
    c = http.client.HTTPConnection(host, timeout=30)
    c.request('PUT', '/' + bucket, headers=hdrs)
    r = c.getresponse()
    return r.status, r.read().decode(errors='replace')
for attempt in range(10):
    status, body = put()
    if status == 200 or (status == 409 and 'BucketAlreadyOwnedByYou' in body):
        print('[swift] bucket %r ready (HTTP %d)' % (bucket, status), file=sys.stderr)
        sys.exit(0)
    if status < 500:
        break
    time.sleep(0.5)
sys.exit('[swift] ERROR creating bucket %r: HTTP %d %s' % (bucket, status, body))
PY
done

cat "$BASE/env"
