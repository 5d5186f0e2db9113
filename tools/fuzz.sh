#!/bin/bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for a
# while over its seed corpus; fails on any crash, leak, sanitizer report or
# broken invariant.  What CI runs after the unit tests.
#
#   usage: tools/fuzz.sh [SECONDS [TARGET...]]     (default 20 s; all targets)
#
#   target  binary                         corpus (seeds, crash regressions)
#   attr    build-fuzz/tests/fuzz/fuzz_attr    tests/fuzz-corpus/attr/
#   creds   build-fuzz/tests/fuzz/fuzz_creds   tests/fuzz-corpus/creds/
#   xml     build-fuzz/tests/xml/fuzz_xml      tests/fuzz-corpus/xml/
#   key     build-fuzz/tests/meta/fuzz_meta_key tests/fuzz-corpus/key/
#
# New inputs libFuzzer finds go to a scratch directory, never into the repo.
# A crash leaves its input in build-fuzz/crashes/TARGET/: add it to
# tests/fuzz-corpus/TARGET/ with the fix, and the replay unit tests
# (fuzz-corpus-TARGET, every build) keep it fixed.  Env: BUCKETFS_FUZZ_BUILD
# (default build-fuzz), BUCKETFS_FUZZ_JOBS (parallel targets, default 2).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
SECONDS_PER_TARGET=${1:-20}
shift || true
BUILD=${BUCKETFS_FUZZ_BUILD:-build-fuzz}
JOBS=${BUCKETFS_FUZZ_JOBS:-2}

declare -A BIN=(
  [attr]=tests/fuzz/fuzz_attr
  [creds]=tests/fuzz/fuzz_creds
  [xml]=tests/xml/fuzz_xml
  [key]=tests/meta/fuzz_meta_key
)
TARGETS=("$@")
[ ${#TARGETS[@]} = 0 ] && TARGETS=(attr creds xml key)
for t in "${TARGETS[@]}"; do
  [ -n "${BIN[$t]:-}" ] || { echo "fuzz.sh: unknown target $t" >&2; exit 2; }
done

# A fresh configuration when there is none; only the fuzz binaries are
# built, so that the rest of the tree need not link under clang.
if [ ! -f "$BUILD/build.ninja" ]; then
  CC=clang meson setup "$BUILD" -Dfuzz=true -Db_sanitize=address,undefined \
    -Db_lundef=false >/dev/null || exit 1
fi
goals=()
for t in "${TARGETS[@]}"; do goals+=("${BIN[$t]}"); done
ninja -C "$BUILD" "${goals[@]}" || exit 1

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/bucketfs-fuzz.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT

run_target() {  # TARGET: exit status of the fuzzer; its log in $SCRATCH
  local t=$1 crashes="$BUILD/crashes/$t"
  mkdir -p "$SCRATCH/$t" "$crashes"
  # -max_len above the largest seed; -rss_limit and -timeout bound a
  # runaway input; -artifact_prefix keeps crash files out of the tree.
  "$BUILD/${BIN[$t]}" -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 \
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$crashes/" "$SCRATCH/$t" "tests/fuzz-corpus/$t" \
    >"$SCRATCH/$t.log" 2>&1
}

declare -A PID RC
failed=0
running=0
for t in "${TARGETS[@]}"; do
  if [ "$running" -ge "$JOBS" ]; then
    wait -n
    running=$((running - 1))
  fi
  run_target "$t" &
  PID[$t]=$!
  running=$((running + 1))
done
for t in "${TARGETS[@]}"; do
  wait "${PID[$t]}"
  RC[$t]=$?
done
for t in "${TARGETS[@]}"; do
  log="$SCRATCH/$t.log"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  if [ "${RC[$t]}" = 0 ]; then
    printf 'fuzz %-6s ok    %ss, %s runs, %s\n' "$t" "$SECONDS_PER_TARGET" "${execs:-?}" "${cov:-?}"
  else
    failed=1
    printf 'fuzz %-6s FAIL  exit %s; the input is in %s/crashes/%s/\n' "$t" "${RC[$t]}" \
      "$BUILD" "$t"
    grep -v '^#[0-9]' "$log" | tail -60
  fi
done
exit $failed
