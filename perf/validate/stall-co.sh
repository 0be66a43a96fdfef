#!/usr/bin/env bash
# Validation (b): coordinated omission. A server that freezes for 100 ms once a
# second (shardline-perf stall-server, pinned to CPU 0) is driven from CPU 1:
#
#   1. shardline-perf, open loop at RATE requests/s (well below the server's
#      maximum), latency from each request's scheduled send time: 10% of the
#      requests are due while the server is frozen and wait 0-100 ms, so the
#      corrected p99 should be near 90 ms and p99.9 near 99 ms;
#   2. shardline-perf in closed loop (uncorrected: latency from the actual send,
#      one sample per response): only the one request per connection caught in
#      flight by a freeze is slow, about 0.015% of all, so p99.9 stays far below
#      the stall: this is the figure coordinated omission produces;
#   3. wrk (closed loop; wrk2, which has a rate mode, is not packaged by Debian).
#      wrk 4.1 keeps a sample of latencies, not one per response, and pads
#      intervals that fell short of its calibrated rate with samples equal to the
#      largest latency seen: a crude correction of its own, so its p99/p99.9 do
#      show the stall (as a step at the maximum). The script prints how many
#      samples wrk kept against how many requests it made.
#
# Waits for a quiet machine before each run (see wait_quiet in lib.sh). Prints
# the percentiles side by side (microseconds) and exits non-zero when the
# corrected p99.9 does not show the stall (< 80 ms) or the uncorrected closed
# loop's p99.9 does (>= 50 ms).
#
# Usage: perf/validate/stall-co.sh
#        RATE=2000 DURATION=10s CONNECTIONS=16 perf/validate/stall-co.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RATE="${RATE:-2000}"
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-16}"
SERVER_CPU="${SERVER_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"

need wrk wrk
build_perf

scratch_and_cleanup

taskset -c "$SERVER_CPU" "$perf" stall-server --listen 127.0.0.1:0 \
    --stall-every 1s --stall-for 100ms --exit-after 10m >"$work/server.out" &
bg_pid=$!
addr=""
for _ in $(seq 50); do
    sleep 0.1
    addr="$(awk '/^listening / {print $2; exit}' "$work/server.out")"
    [[ -n "$addr" ]] && break
done
[[ -n "$addr" ]] || { echo "stall-server did not start" >&2; exit 1; }
url="http://$addr/"
echo "stall-server $addr (pid $bg_pid, CPU $SERVER_CPU): 100 ms freeze every 1 s"

wait_quiet
echo "1. $perf load --url $url --rate $RATE --connections $CONNECTIONS --duration $DURATION --warmup 1s --cpus $LOAD_CPU --json"
taskset -c "$LOAD_CPU" "$perf" load --url "$url" --rate "$RATE" --connections "$CONNECTIONS" \
    --duration "$DURATION" --warmup 1s --threads 1 --cpus "$LOAD_CPU" --json >"$work/open.json"
wait_quiet
echo "2. $perf load --url $url --connections $CONNECTIONS --duration $DURATION --cpus $LOAD_CPU --json"
taskset -c "$LOAD_CPU" "$perf" load --url "$url" --connections "$CONNECTIONS" \
    --duration "$DURATION" --threads 1 --cpus "$LOAD_CPU" --json >"$work/closed.json"
wait_quiet
echo "3. taskset -c $LOAD_CPU wrk -t1 -c$CONNECTIONS -d$DURATION -s perf/validate/percentiles.lua $url"
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" \
    -s "$root/perf/validate/percentiles.lua" "$url" >"$work/wrk.out"

wrk_line="$(grep '^wrk-latency-us' "$work/wrk.out")"
wrk_get() { awk -v k="$1" '{ for (i = 2; i < NF; i += 2) if ($i == k) print $(i + 1) }' <<<"$wrk_line"; }
wrk_rps="$(awk '/^Requests\/sec:/ {print $2}' "$work/wrk.out")"

printf '\n%-40s %12s %9s %9s %9s %9s %9s %9s\n' "latency (us)" requests/s p50 p90 p99 p99.9 p99.99 max
row_perf() { # label file
    printf '%-40s %12.0f' "$1" "$(json_num "$2" rps)"
    for q in p50 p90 p99 p99.9 p99.99 max; do printf ' %9.0f' "$(json_num "$2" latency_us "$q")"; done
    printf '\n'
}
row_perf "shardline-perf --rate $RATE (corrected)" "$work/open.json"
row_perf "shardline-perf closed loop" "$work/closed.json"
printf '%-40s %12.0f' "wrk closed loop (sampled)" "$wrk_rps"
for q in p50 p90 p99 p99.9 p99.99 max; do printf ' %9.0f' "$(wrk_get "$q")"; done
printf '\n'
echo "open loop: send lag p50 $(json_num "$work/open.json" send_lag_us p50) us, unsent at end $(json_num "$work/open.json" unsent_at_end), errors $(json_num "$work/open.json" errors total)"
echo "wrk kept $(wrk_get samples) latency samples for $(wrk_get requests) requests; $(wrk_get slow_share)% of the samples are >= 50 ms"

open_p999="$(json_num "$work/open.json" latency_us p99.9)"
closed_p999="$(json_num "$work/closed.json" latency_us p99.9)"
status=0
if awk -v x="$open_p999" 'BEGIN { exit !(x >= 80000) }'; then
    echo "PASS: the corrected p99.9 ($open_p999 us) shows the 100 ms stall"
else
    echo "FAIL: the corrected p99.9 ($open_p999 us) does not show the 100 ms stall"
    status=1
fi
if awk -v x="$closed_p999" 'BEGIN { exit !(x < 50000) }'; then
    echo "PASS: the uncorrected closed-loop p99.9 ($closed_p999 us) hides it"
else
    echo "FAIL: the uncorrected closed-loop p99.9 ($closed_p999 us) shows it (a noisy machine?)"
    status=1
fi
exit "$status"
