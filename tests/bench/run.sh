#!/bin/sh
# Builds bucketfs if needed, then runs the benchmark:
#   tests/bench/run.sh [--quick] [--server s3rver|swift] [--out FILE] [--only LIST] ...
# The build directory is $BUCKETFS_BUILD, default build/ (meson setup if
# missing). If the build fails but a binary is there, that one is used.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUCKETFS_BUILD:-$ROOT/build}
if [ ! -f "$BUILD/build.ninja" ]; then
  meson setup "$BUILD" "$ROOT"
fi
if ! out=$(ninja -C "$BUILD" fs/bucketfs 2>&1); then
  printf '%s\n' "$out" | tail -20 >&2
  if [ -x "$BUILD/fs/bucketfs" ]; then
    echo "run.sh: the build failed; benchmarking the existing $BUILD/fs/bucketfs" >&2
  else
    echo "run.sh: the build failed and there is no $BUILD/fs/bucketfs" >&2
    exit 1
  fi
fi
export BUCKETFS_BUILD="$BUILD"
exec /usr/bin/python3 "$ROOT/tests/bench/bench.py" "$@"
