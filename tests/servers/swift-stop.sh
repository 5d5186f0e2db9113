#!/bin/bash
# Stops exactly the Swift servers that swift-start.sh started from the same
# SWIFT_BASE, by the process-group ids saved in $SWIFT_BASE/run/*.pid (each was
# started with setsid, so the group holds that server and its workers only).
#   usage: SWIFT_BASE=... swift-stop.sh [--purge]   (--purge: rm -rf SWIFT_BASE)
set -u
BASE=${SWIFT_BASE:-/tmp/bucketfs-swift}
[ -d "$BASE" ] || exit 0
BASE=$(cd "$BASE" && pwd)
ETC=$BASE/etc RUN=$BASE/run

ours() {  # $1 pid, $2 name: the pid still runs our server with our config
  [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' < "/proc/$1/cmdline" | grep -q -- "$ETC/$2.conf"
}

alive() {  # $1 pgid: some process of the group is alive (zombies don't count:
           # the init here reaps orphans only now and then)
  ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { f = 1 } END { exit !f }'
}

for name in proxy-server object-server container-server account-server; do
  f=$RUN/$name.pid
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if ! ours "$pid" "$name"; then
    rm -f "$f"; continue
  fi
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 100); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    echo "[swift] $name group $pid did not exit; sending KILL" >&2
    kill -KILL -- "-$pid" 2>/dev/null
  fi
  rm -f "$f"
  echo "[swift] stopped $name (pgid $pid)" >&2
done

# The watchdog (a bash running "sleep"; it execs this script when its time is
# up, and then is this very process).
f=$RUN/watchdog.pid
if [ -f "$f" ]; then
  pid=$(cat "$f")
  if [ "$pid" != $$ ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "swift-watchdog $BASE "; then
    kill -TERM -- "-$pid" 2>/dev/null
  fi
  rm -f "$f"
fi

if [ "${1:-}" = --purge ]; then
  rm -rf "$BASE"
fi
exit 0
