#!/bin/bash
# Installs everything needed to build bucketfs and run all of its tests on
# Debian 12 (bookworm): compilers and -dev libraries, FUSE, the test S3
# servers (s3rver through npm, OpenStack Swift with s3api from Debian), and the
# clients the tests compare against (aws-cli, s3fs, rclone).
#
#   usage: tools/deps.sh          (as root, or with sudo available)
#
# Idempotent: apt is touched only when a package is missing, and `npm ci` runs
# only when tests/package-lock.json changed since the last install, so a second
# run takes well under a second.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "[deps] $*"; }

PKGS=(
  # build
  gcc meson ninja-build pkg-config clang libclang-rt-14-dev clang-format
  # libraries
  libfuse3-dev fuse3 libcurl4-openssl-dev libssl-dev libxml2-dev
  libsqlite3-dev sqlite3
  # test tools and reference clients
  awscli python3 python3-botocore python3-pytest curl ca-certificates
  rsync s3fs rclone attr psmisc procps iproute2 valgrind gdb
  # OpenStack Swift with the s3api middleware (second test server)
  swift swift-proxy swift-account swift-container swift-object
)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for p in "${PKGS[@]}"; do
  installed "$p" || missing+=("$p")
done
# Node.js: a nodesource nodejs (which bundles npm) may already be there, and
# Debian's npm package conflicts with it; install Debian's only when absent.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

SUDO=
if [ "$(id -u)" != 0 ]; then
  SUDO=sudo
fi

if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  if [ -n "$SUDO" ] && ! command -v sudo >/dev/null 2>&1; then
    echo "[deps] ERROR: not root and no sudo; run tools/deps.sh as root" >&2
    exit 1
  fi
  # Keep package scripts from starting services (swift-*, ...) at install
  # time: policy-rc.d answering 101 tells invoke-rc.d "not allowed".
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt_opts=(-o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
  log "apt-get update"
  $SUDO apt-get "${apt_opts[@]}" update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -qq \
    --no-install-recommends "${missing[@]}"
  if [ $own_policy = 1 ]; then
    $SUDO rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
  log "apt: installed ${#missing[@]} package(s)"
else
  log "apt: all ${#PKGS[@]} packages present"
fi

# Swift's servers read the hash prefix/suffix from /etc/swift/swift.conf
# (hard-coded path). Debian ships one with usable values; create it if absent.
if ! grep -Eq '^\s*swift_hash_path_(suffix|prefix)\s*=\s*\S' /etc/swift/swift.conf 2>/dev/null; then
  log "writing /etc/swift/swift.conf"
  $SUDO mkdir -p /etc/swift
  printf '%s\n' '[swift-hash]' 'swift_hash_path_suffix = bucketfs-test' \
    'swift_hash_path_prefix = bucketfs-test' '[storage-policy:0]' 'name = Policy-0' \
    'default = yes' | $SUDO tee /etc/swift/swift.conf >/dev/null
fi

# npm test dependencies (s3rver), pinned by tests/package-lock.json.
lock=$ROOT/tests/package-lock.json
stamp=$ROOT/tests/node_modules/.bucketfs-lock.sha256
want=$(sha256sum "$lock" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && [ -f "$ROOT/tests/node_modules/s3rver/bin/s3rver.js" ]; then
  log "npm: tests/node_modules up to date"
else
  log "npm ci --prefix tests"
  npm ci --prefix "$ROOT/tests" --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi

log "done: node $(node --version), $(/usr/bin/aws --version 2>&1 | cut -d' ' -f1), meson $(meson --version)"
