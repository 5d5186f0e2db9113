#!/bin/bash
# Installs, builds and runs every test of bucketfs; what CI runs (.ci/run).
#
#   usage: tools/test.sh            from anywhere; works in the repo root
#
#   1. tools/deps.sh                          packages, npm ci (fast when done)
#   2. build-ci:   meson -Dwerror=true, ninja, meson test --suite unit
#   3. build-asan: the same under ASan + UBSan, meson test --suite unit
#      then tools/fuzz.sh: libFuzzer targets (build-fuzz, clang), 20 s each
#   4. pytest tests/   (integration: real servers, the ASan+UBSan binary from
#                       BUCKETFS_BUILD=<abs build-asan>; any report fails)
#   4b. valgrind memcheck of a small subset (build-ci, s3rver)
#   4c. build-tsan: ThreadSanitizer on a concurrent workload (test_stress.py)
#   5. bench --quick with build-ci
#
# Exits non-zero if any step failed; prints a summary. Servers, proxies and
# mounts that the tests started live under one temporary directory ($TMPDIR
# for the run); on exit, whatever is left there is stopped/unmounted, by the
# pid files the servers wrote. Env: BUCKETFS_SKIP_DEPS=1 skips step 1;
# BUCKETFS_PYTEST_ARGS adds arguments to pytest (e.g. "-k s3rver").
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
PY=/usr/bin/python3
export ROOT PY  # for the steps, which run in a child bash (step)

RUN_TMP=$(mktemp -d /tmp/bucketfs-test.XXXXXX)
export TMPDIR=$RUN_TMP RUN_TMP

cleanup() {
  # FUSE mounts the tests left behind under the run's temporary directory.
  if command -v findmnt >/dev/null; then
    findmnt -rn -o TARGET | grep "^$RUN_TMP/" | sort -r | while read -r m; do
      echo "[test] unmounting leftover $m"
      fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
  fi
  # Servers, by the state each wrote in its directory.
  find "$RUN_TMP" -maxdepth 4 -type f -name proxy-server.conf -path '*/etc/*' 2>/dev/null |
    while read -r conf; do
      SWIFT_BASE=$(dirname "$(dirname "$conf")") bash "$ROOT/tests/servers/swift-stop.sh"
    done
  find "$RUN_TMP" -maxdepth 4 -name server.json 2>/dev/null | while read -r f; do
    d=$(dirname "$f")
    [ -f "$d/kind" ] || echo s3rver > "$d/kind"
    $PY "$ROOT/tests/servers/servers.py" stop --dir "$d"
  done
  rm -rf "$RUN_TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

declare -a SUMMARY
FAILED=0
STEP_N=0
# Every step has a time limit, and the whole run a deadline (CI gives 90
# minutes; a normal run takes about 20): a step that hangs is killed with its
# whole process group (timeout(1)), reported as FAIL, and the run goes on to
# its summary instead of being cut off without one.
T_START=$(date +%s)
DEADLINE=$(( T_START + ${BUCKETFS_CI_BUDGET:-4800} ))
step() {  # step NAME LIMIT_S CMD...: runs CMD within LIMIT_S, records its result and time
  local name=$1 limit=$2 t0 rc left log
  shift 2
  t0=$(date +%s)
  left=$(( DEADLINE - t0 ))
  [ "$left" -lt "$limit" ] && limit=$left
  echo
  echo "=================================================================="
  echo "== $name  ($(date -u +%H:%M:%S), limit ${limit}s)"
  echo "=================================================================="
  if [ "$limit" -le 0 ]; then
    SUMMARY+=("$(printf 'FAIL  %-34s        (no time left before the deadline)' "$name")")
    FAILED=1
    return 1
  fi
  STEP_N=$(( STEP_N + 1 ))
  log="$RUN_TMP/step-$STEP_N.log"
  timeout -k 30 "$limit" bash -c '"$@"' step "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  if [ $rc = 0 ]; then
    SUMMARY+=("$(printf 'PASS  %-34s %4ds' "$name" $(( $(date +%s) - t0 )))")
  elif [ $rc = 124 ] || [ $rc = 137 ]; then
    echo "[test] $name: killed after its limit of ${limit}s"
    SUMMARY+=("$(printf 'FAIL  %-34s %4ds  (timed out: limit %ds)' "$name" $(( $(date +%s) - t0 )) "$limit")")
    FAILED=1
  else
    SUMMARY+=("$(printf 'FAIL  %-34s %4ds  (exit %d)' "$name" $(( $(date +%s) - t0 )) $rc)")
    FAILED=1
  fi
  [ $rc = 0 ] || why_failed "$log"
  return $rc
}
# The lines of a failed step's output that say what failed (pytest's FAILED
# and ERROR lines, a sanitizer's SUMMARY, else the step's last lines), under
# its line of the summary: CI shows the end of the output, and the summary is
# the end.
why_failed() {  # LOG
  local lines
  lines=$( (grep -aE '^(FAILED|ERROR) |^SUMMARY: ' "$1" | head -n 6
             grep -aE '^E +[^ ]' "$1" | head -n 4) )
  [ -n "$lines" ] || lines=$(grep -av '^[[:space:]]*$' "$1" | tail -n 3)
  [ -n "$lines" ] || return 0
  while IFS= read -r l; do
    SUMMARY+=("      ${l:0:200}")
  done <<<"$lines"
}
skip() { SUMMARY+=("$(printf 'SKIP  %-34s        (%s)' "$1" "$2")"); }

setup_build() {  # DIR [meson options...]: a fresh configuration
  local dir=$1
  shift
  rm -rf "$dir"
  meson setup "$dir" "$@"
}
export -f setup_build

unit_tests() {  # DIR
  meson test -C "$1" --suite unit --print-errorlogs
}
export -f unit_tests

# ----------------------------------------------------------------- 1. deps
deps_ok=1
if [ "${BUCKETFS_SKIP_DEPS:-0}" = 1 ]; then
  skip "deps (tools/deps.sh)" "BUCKETFS_SKIP_DEPS=1"
else
  step "deps (tools/deps.sh)" 1500 bash tools/deps.sh || deps_ok=0
fi

# ----------------------------------------------------------------- 1b. format
# Every C file is formatted with the checked-in .clang-format.
check_format() {
  git ls-files '*.c' '*.h' | xargs clang-format --dry-run -Werror
}
export -f check_format
if command -v clang-format >/dev/null && git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  step "clang-format --dry-run" 120 check_format
else
  skip "clang-format --dry-run" "no clang-format or not a git checkout"
fi

# ----------------------------------------------------------------- 2. build-ci
ci_ok=0
if [ $deps_ok = 1 ]; then
  if step "build-ci: meson setup" 180 setup_build build-ci -Dwerror=true &&
     step "build-ci: ninja" 600 ninja -C build-ci; then
    ci_ok=1
    step "build-ci: unit tests" 600 unit_tests build-ci || ci_ok=0
  fi
else
  skip "build-ci" "deps failed"
fi

# ----------------------------------------------------------------- 3. build-asan
asan_ok=0
if [ $deps_ok = 1 ]; then
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
  if step "build-asan: meson setup" 180 setup_build build-asan -Dwerror=true \
        -Db_sanitize=address,undefined -Db_lundef=false &&
     step "build-asan: ninja" 600 ninja -C build-asan; then
    step "build-asan: unit tests" 600 unit_tests build-asan && asan_ok=1
  fi
else
  skip "build-asan" "deps failed"
fi

# ----------------------------------------------------------------- 3b. fuzz
if [ $deps_ok = 1 ]; then
  step "fuzz: tools/fuzz.sh (20 s/target)" 600 bash tools/fuzz.sh 20
else
  skip "fuzz" "deps failed"
fi

# ----------------------------------------------------------------- 4. pytest
# The whole suite mounts the ASan+UBSan build: every mount's daemon writes any
# sanitizer report into its directory and must exit 0 at unmount with none
# (tests/mount.py; other processes the tests start: tests/conftest.py).  Only
# when build-asan failed (already a FAIL above) does it fall back to build-ci.
if [ $ci_ok = 1 ]; then
  if [ $asan_ok = 1 ]; then
    export BUCKETFS_BUILD=$ROOT/build-asan BUCKETFS_ASAN_BUILD=$ROOT/build-asan
    pytest_name="pytest tests/ (build-asan)"
  else
    export BUCKETFS_BUILD=$ROOT/build-ci
    pytest_name="pytest tests/ (build-ci: no asan)"
  fi
  # shellcheck disable=SC2086
  step "$pytest_name" 2100 $PY -m pytest -x -v -p no:cacheprovider --durations=40 \
    --basetemp="$RUN_TMP/pytest" tests/ ${BUCKETFS_PYTEST_ARGS:-}
else
  skip "pytest tests/" "build-ci failed"
fi

# ----------------------------------------------------------------- 4b. valgrind
# A representative subset (mount, write, read, list, rename, remount,
# unmount; s3rver) with the plain daemon under valgrind memcheck: no error
# and no definite or indirect leak at unmount (tests/mount.py, BUCKETFS_VALGRIND).
if [ $ci_ok = 1 ]; then
  step "valgrind memcheck: test_memcheck.py" 900 env BUCKETFS_BUILD="$ROOT/build-ci" \
    BUCKETFS_VALGRIND=1 BUCKETFS_S3SERVERS=s3rver $PY -m pytest -x -v -p no:cacheprovider \
    --basetemp="$RUN_TMP/pytest-valgrind" tests/test_memcheck.py
else
  skip "valgrind memcheck" "build-ci failed"
fi

# ----------------------------------------------------------------- 4c. tsan
# build-tsan (gcc -fsanitize=thread) runs a concurrent workload on the mount
# (tests/test_stress.py: threads reading and writing the same and different
# files, readdir in parallel); any ThreadSanitizer report fails it.
if [ $deps_ok = 1 ]; then
  if step "build-tsan: meson setup" 180 setup_build build-tsan -Dwerror=true \
        -Db_sanitize=thread -Db_lundef=false &&
     step "build-tsan: ninja" 600 ninja -C build-tsan fs/bucketfs; then
    step "tsan: test_stress.py" 600 env BUCKETFS_BUILD="$ROOT/build-tsan" \
      BUCKETFS_S3SERVERS=s3rver BUCKETFS_STRESS_SECONDS=25 $PY -m pytest -x -v \
      -p no:cacheprovider --basetemp="$RUN_TMP/pytest-tsan" tests/test_stress.py
  fi
else
  skip "build-tsan" "deps failed"
fi

# ----------------------------------------------------------------- 5. bench
# The benchmark in its quick mode: it must complete and print its table
# (bucketfs vs s3fs-fuse vs rclone mount); timings are not asserted here.
bench_quick() {
  BUCKETFS_BUILD=$ROOT/build-ci sh tests/bench/run.sh --quick --out "$RUN_TMP/bench-quick.md" &&
    cat "$RUN_TMP/bench-quick.md"
}
export -f bench_quick
if [ $ci_ok = 1 ]; then
  step "bench: tests/bench/run.sh --quick" 600 bench_quick
else
  skip "bench --quick" "build-ci failed"
fi

echo
echo "=================================================================="
echo "== summary"
echo "=================================================================="
printf '%s\n' "${SUMMARY[@]}"
if [ $FAILED = 0 ]; then
  echo "ALL PASSED"
else
  echo "FAILED"
fi
exit $FAILED
