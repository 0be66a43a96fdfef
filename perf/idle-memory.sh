#!/usr/bin/env bash
# Idle-connection memory benchmark for shardline: builds the server and the harness
# in release, starts `shardline` with one shard on a free loopback port, opens
# CONNECTIONS keep-alive connections, sends one request on each, and prints the
# server's resident memory per idle connection. Works on a 2-core machine (one
# shard, one client thread). See perf/README.md.
#
# Usage: perf/idle-memory.sh            (CONNECTIONS=10000 by default)
#        CONNECTIONS=2000 perf/idle-memory.sh
set -euo pipefail

CONNECTIONS="${CONNECTIONS:-10000}"
# Descriptors each process needs beyond the connections themselves (listeners,
# io_uring, logs, /proc reads).
FD_MARGIN=1024
# How long the server may take to print its ready line (a cold start is well
# under a second; this only bounds a hang).
READY_TIMEOUT_S=30
# How long the server gets to drain and exit after SIGTERM before SIGKILL.
STOP_TIMEOUT_S=15

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target_dir="${CARGO_TARGET_DIR:-$root/target}"

echo "==> building shardline and shardline-perf (release)" >&2
cargo build --release -p shardline -p shardline-perf >&2

# Both the server and the client hold one descriptor per connection, and both
# inherit this shell's limit. Raise the soft limit; if the hard limit is too low
# as well, raising it needs root (or CAP_SYS_RESOURCE).
needed=$((CONNECTIONS + FD_MARGIN))
if [ "$(ulimit -Sn)" != unlimited ] && [ "$(ulimit -Sn)" -lt "$needed" ]; then
    if ! ulimit -Sn "$needed" 2>/dev/null && ! ulimit -n "$needed" 2>/dev/null; then
        echo "idle-memory.sh: error: $CONNECTIONS connections need an open-files limit of" \
            "at least $needed, but the hard limit is $(ulimit -Hn) and cannot be raised" \
            "here; run as root, raise the hard limit (limits.conf, LimitNOFILE," \
            "prlimit), or set CONNECTIONS lower" >&2
        exit 1
    fi
fi

work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq $((STOP_TIMEOUT_S * 10))); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# The connection limit is raised above CONNECTIONS so that the benchmark measures
# memory, not where the limit cuts in; the idle timeout is long so that no
# connection is closed while they are being counted; the data directory is a
# scratch one so nothing is left in the work tree.
"$target_dir/release/shardline" \
    --shards 1 \
    --listen 127.0.0.1:0 \
    --admin-listen off \
    --max-connections-per-shard "$needed" \
    --idle-timeout 10m \
    --data-dir "$work/data" \
    >"$work/stdout" 2>"$work/stderr" &
server_pid=$!

addr=""
for _ in $(seq $((READY_TIMEOUT_S * 10))); do
    addr="$(sed -n 's/^shardline ready .*listen=\([^ ]*\).*/\1/p' "$work/stdout" | head -n 1)"
    [ -n "$addr" ] && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "idle-memory.sh: error: shardline exited before it was ready; its stderr:" >&2
        cat "$work/stderr" >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$addr" ]; then
    echo "idle-memory.sh: error: no 'shardline ready' line within ${READY_TIMEOUT_S}s; stderr:" >&2
    cat "$work/stderr" >&2
    exit 1
fi

echo "==> shardline (PID $server_pid, 1 shard) listening on $addr; $CONNECTIONS connections" >&2
"$target_dir/release/shardline-perf" idle \
    --addr "$addr" \
    --connections "$CONNECTIONS" \
    --pid "$server_pid"
