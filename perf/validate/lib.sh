# Shared helpers of the validation scripts (sourced, not run).
# shellcheck shell=bash

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
perf="$root/target/release/shardline-perf"

# Installs a Debian package when its command is missing.
need() { # command package
    if ! command -v "$1" >/dev/null; then
        echo "installing $2 (Debian package)" >&2
        apt-get install -y -qq "$2" >/dev/null
    fi
}

# A scratch directory ($work) and the one background server a script starts
# ($bg_pid, set by the caller), both cleaned up on exit however it ends.
scratch_and_cleanup() {
    work="$(mktemp -d)"
    bg_pid=""
    trap 'if [[ -n "$bg_pid" ]]; then kill "$bg_pid" 2>/dev/null || true; wait "$bg_pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
}

build_perf() {
    (cd "$root" && cargo build --release -q -p shardline-perf)
}

# median of the numbers given as arguments
median() {
    printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2 }'
}

# json_num FILE KEY...: a number from shardline-perf's one-line --json output,
# e.g. json_num out.json rps, json_num out.json latency_us p99.9
json_num() {
    local file=$1
    shift
    python3 - "$file" "$@" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2:]:
    v = v[k]
print(v)
PY
}

# Percent of all CPU time that was busy over the last second (from /proc/stat).
busy_percent() {
    local a b
    a=($(head -1 /proc/stat))
    sleep 1
    b=($(head -1 /proc/stat))
    awk -v u="$((b[1] + b[2] + b[3] + b[6] + b[7] + b[8] - a[1] - a[2] - a[3] - a[6] - a[7] - a[8]))" \
        -v t="$((b[1] + b[2] + b[3] + b[4] + b[5] + b[6] + b[7] + b[8] - a[1] - a[2] - a[3] - a[4] - a[5] - a[6] - a[7] - a[8]))" \
        'BEGIN { printf "%d", (t > 0 ? 100 * u / t : 0) }'
}

# The machine is shared (builds, other benchmarks): before a measured run, wait
# until it has been quiet (under QUIET_BUSY percent busy, default 5) for a
# second, at most QUIET_WAIT seconds (default 120), then go on with a warning.
wait_quiet() {
    local limit="${QUIET_WAIT:-120}" busy="${QUIET_BUSY:-5}" waited=0 now
    while now="$(busy_percent)"; ((now >= busy)); do
        waited=$((waited + 1))
        if ((waited >= limit)); then
            echo "warning: the machine is still ${now}% busy after ${limit}s; measuring anyway" >&2
            return 0
        fi
    done
}

# CPU seconds (user + system) process PID has used so far, from /proc/PID/stat.
cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); printf "%.3f", ($12 + $13) / hz }' "/proc/$1/stat"
}

# timed_run OUTFILE CMD...: runs CMD with stdout to OUTFILE and sets LOAD_CPU_PCT
# to the CPU it used (user + system, all threads) per second of its run, in %.
timed_run() {
    local out=$1 t
    shift
    t="$({ TIMEFORMAT='%R %U %S'; time "$@" >"$out"; } 2>&1 | tail -1)"
    LOAD_CPU_PCT="$(awk '{ printf "%.0f", 100 * ($2 + $3) / $1 }' <<<"$t")"
}
