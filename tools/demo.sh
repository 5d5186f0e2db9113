#!/bin/bash
# A working bucketfs in one command: installs the dependencies, builds, starts
# a local S3 server on 127.0.0.1 with a sample bucket "demo", mounts it at
# /mnt/bucketfs-demo and shows it with ls -lR and cat.
#
#   usage: tools/demo.sh [--swift] [--no-deps]    start (s3rver by default)
#          tools/demo.sh stop                     unmount, stop the server
#
#   env:   DEMO_MNT       mount point        (default /mnt/bucketfs-demo)
#          DEMO_DIR       server state       (default /tmp/bucketfs-demo)
#          DEMO_BIN       the mounting binary (default build/fs/bucketfs;
#                         /usr/bin/s3fs takes the same arguments)
#          DEMO_LIFETIME  seconds until the server stops by itself
#                         (default 3600; 0 = never)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=/usr/bin/python3
MNT=${DEMO_MNT:-/mnt/bucketfs-demo}
DIR=${DEMO_DIR:-/tmp/bucketfs-demo}
LIFETIME=${DEMO_LIFETIME:-3600}
BIN=${DEMO_BIN:-$ROOT/build/fs/bucketfs}
BUCKET=demo

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { printf '\n\033[1;31mdemo: %s\033[0m\n' "$*" >&2; exit 1; }

stop_demo() {
  if mountpoint -q "$MNT" 2>/dev/null; then
    echo "unmounting $MNT"
    fusermount3 -u "$MNT" 2>/dev/null || umount "$MNT" || fusermount3 -u -z "$MNT"
  fi
  if [ -d "$DIR" ]; then
    $PY tests/servers/servers.py stop --dir "$DIR"
    rm -rf "$DIR"
  fi
}

kind=s3rver deps=1
for a in "$@"; do
  case $a in
    stop) stop_demo; echo "demo stopped"; exit 0 ;;
    --swift) kind=swift ;;
    --no-deps) deps=0 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $a (see --help)" ;;
  esac
done

if [ $deps = 1 ]; then
  say "installing dependencies (tools/deps.sh)"
  bash tools/deps.sh
fi

say "building (build/)"
build_ok=1
if [ ! -f build/build.ninja ]; then
  meson setup build || build_ok=0
fi
[ $build_ok = 1 ] && { ninja -C build || build_ok=0; }
[ $build_ok = 1 ] || echo "demo: WARNING: the build failed (see above); going on to show the bucket" >&2

say "starting $kind on 127.0.0.1 (state in $DIR)"
stop_demo >/dev/null 2>&1 || true
mkdir -p "$DIR"
$PY tests/servers/servers.py start "$kind" --dir "$DIR" --bucket "$BUCKET" \
  --lifetime "$LIFETIME" > "$DIR/env.out"
# shellcheck disable=SC1091
set -a; . "$DIR/env"; set +a
unset AWS_CA_BUNDLE AWS_PROFILE AWS_SESSION_TOKEN
export AWS_EC2_METADATA_DISABLED=true
echo "endpoint $S3_ENDPOINT  access key $AWS_ACCESS_KEY_ID  bucket $BUCKET"
awsd() { /usr/bin/aws --endpoint-url "$S3_ENDPOINT" "$@"; }

say "filling bucket '$BUCKET' with sample files (aws s3 cp)"
sample=$DIR/sample
mkdir -p "$sample/docs/notes/2024" "$sample/photos"
printf 'Hello from bucketfs!\nThis file lives in the S3 bucket "%s".\n' "$BUCKET" > "$sample/hello.txt"
printf '# Docs\n\nA nested directory: docs/notes/2024/.\n' > "$sample/docs/README.md"
printf 'meeting notes\n- mount a bucket\n- rsync it nightly\n' > "$sample/docs/notes/2024/january.txt"
head -c 1048576 /dev/urandom > "$sample/photos/random-1MiB.bin"
awsd s3 cp --recursive --quiet "$sample" "s3://$BUCKET/"
# One object with POSIX attributes in s3fs-style metadata (mode 0600).
awsd s3api put-object --bucket "$BUCKET" --key private.txt --body "$sample/hello.txt" \
  --metadata "mode=33152,uid=$(id -u),gid=$(id -g),mtime=1700000000" >/dev/null
awsd s3 ls --recursive "s3://$BUCKET/"

say "mounting s3://$BUCKET at $MNT"
if [ ! -x "$BIN" ]; then
  die "$BIN does not exist (yet): the build has not produced the bucketfs binary.
The S3 server is running with the sample bucket; stop it with: $0 stop"
fi
mkdir -p "$MNT"
"$BIN" "$BUCKET:/" "$MNT" -o "url=$S3_ENDPOINT,use_path_request_style" ||
  die "bucketfs failed to mount (exit $?); stop the server with: $0 stop"
for _ in $(seq 1 50); do
  mountpoint -q "$MNT" && break
  sleep 0.2
done
mountpoint -q "$MNT" || die "$MNT is not a mount point after 10 s; stop with: $0 stop"

say "ls -lR $MNT"
ls -lR "$MNT"
say "cat $MNT/hello.txt"
cat "$MNT/hello.txt"
say "cat $MNT/docs/notes/2024/january.txt"
cat "$MNT/docs/notes/2024/january.txt"

say "the bucket is mounted"
cat <<EOF
  browse:   ls $MNT
  aws:      set -a; . $DIR/env; set +a; aws --endpoint-url \$S3_ENDPOINT s3 ls s3://$BUCKET/
  unmount:  fusermount3 -u $MNT
  stop all: $0 stop          (unmounts and stops the $kind server)
The server stops by itself after ${LIFETIME}s (DEMO_LIFETIME; 0 = never).
EOF
