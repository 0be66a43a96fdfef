#!/usr/bin/env bash
# Allocator comparison for shardline: builds the server three times (jemalloc,
# mimalloc, glibc malloc), then runs them interleaved on the same route with
# the same pinning (server on CPU 0, wrk on CPU 1) and prints requests/s and
# server CPU time per request (utime+stime from /proc) for each run. Compare
# medians; this machine is noisy, so a difference under 10% is no difference.
#
# Usage: perf/allocator-ab.sh plaintext     (GET /plaintext, 64 connections)
#        perf/allocator-ab.sh echo200k      (POST /echo with a 200 KB body, 16 connections)
#        ROUNDS=5 DURATION=5s perf/allocator-ab.sh plaintext
set -euo pipefail

SCENARIO="${1:-plaintext}"
ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-5s}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if ! command -v wrk >/dev/null; then
    echo "allocator-ab.sh: installing wrk (Debian package)" >&2
    apt-get install -y -qq wrk >/dev/null
fi

build() { # name, cargo feature flags...
    local name=$1
    shift
    cargo build --release -p shardline "$@" >&2
    cp target/release/shardline "$work/shardline-$name"
}
build glibc --no-default-features
build mimalloc --no-default-features --features mimalloc
build jemalloc   # the default

case "$SCENARIO" in
plaintext)
    path=/plaintext
    conns=64
    script=()
    ;;
echo200k)
    path=/echo
    conns=16
    head -c 200000 /dev/zero | tr '\0' 'x' >"$work/body"
    cat >"$work/post.lua" <<LUA
local f = io.open("$work/body", "rb"); local b = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = b; wrk.headers["Content-Type"] = "text/plain"
LUA
    script=(-s "$work/post.lua")
    ;;
*)
    echo "allocator-ab.sh: unknown scenario $SCENARIO (plaintext | echo200k)" >&2
    exit 2
    ;;
esac

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

run() { # name
    local name=$1
    "$work/shardline-$name" --listen 127.0.0.1:0 --admin-listen off --shards 1 --cpus 0 \
        --max-body-bytes 1MiB >"$work/ready" 2>/dev/null &
    local pid=$!
    for _ in $(seq 100); do grep -q ready "$work/ready" && break; sleep 0.05; done
    local addr
    addr=$(sed -n 's/.*listen=\([^ ]*\).*/\1/p' "$work/ready")
    taskset -c 1 wrk -t1 -c"$conns" -d1s "${script[@]}" "http://$addr$path" >/dev/null
    local t0 t1 out
    t0=$(cpu_ticks "$pid")
    out=$(taskset -c 1 wrk -t1 -c"$conns" -d"$DURATION" "${script[@]}" "http://$addr$path")
    t1=$(cpu_ticks "$pid")
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    local rps reqs
    rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
    reqs=$(echo "$out" | awk '/requests in/{print $1}')
    printf '%-9s %-10s req/s %10s   server CPU/request %8.2f us\n' "$name" "$SCENARIO" "$rps" \
        "$(echo "($t1 - $t0) * 1000000 / $hz / $reqs" | bc -l)"
}

for _ in $(seq "$ROUNDS"); do
    run jemalloc
    run mimalloc
    run glibc
done
