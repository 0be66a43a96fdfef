#!/usr/bin/env bash
# Validation (a): shardline-perf's closed-loop maximum throughput against nginx
# agrees with wrk's within 10%, with the same connections and pinning.
#
# nginx: one worker, `return 200`, access_log off, keep-alive without a request
# cap, pinned to CPU 0 (taskset). Load: wrk -t1 and shardline-perf --threads 1,
# both pinned to CPU 1, the same connections and duration, alternating (the
# order swaps every round), ROUNDS rounds; prints each run, the medians and
# their ratio, and exits non-zero when the medians differ by 10% or more.
#
# Each run also prints the nginx worker's CPU use and the load generator's: the
# comparison is only about the server's maximum when the server is the
# bottleneck (its CPU near 100%). With `return 200` on this 2-core machine wrk's
# one thread can run out of CPU first (it makes 4 syscalls per request, two of
# them epoll_ctl, where shardline-perf makes 2), and how promptly a client
# answers changes how many requests nginx finds per epoll_wait, hence its CPU
# per request. VARIANT=gzip makes nginx deflate an 8 KiB file on every response
# (both clients send Accept-Encoding: gzip): nginx's work per request then
# dwarfs those effects and the figure is the server's own maximum.
# (VARIANT=gzip serves a static 8 KiB text file, deflated at level 6.)
#
# Waits for a quiet machine before each run (see wait_quiet in lib.sh).
#
# Usage: perf/validate/throughput-vs-wrk.sh
#        ROUNDS=5 DURATION=10s CONNECTIONS=256 perf/validate/throughput-vs-wrk.sh
#        VARIANT=gzip perf/validate/throughput-vs-wrk.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5s}"
CONNECTIONS="${CONNECTIONS:-64}"
SERVER_CPU="${SERVER_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
VARIANT="${VARIANT:-plain}"

need wrk wrk
need nginx nginx-light
build_perf

scratch_and_cleanup

case "$VARIANT" in
plain)
    location='return 200;'
    path=/
    gzip=''
    perf_headers=()
    wrk_headers=()
    ;;
gzip)
    # A static 8 KiB file of base64 text (the same bytes every run): it
    # compresses only to ~75%, so deflate costs nginx real work per response.
    mkdir -p "$work/www"
    chmod 755 "$work" "$work/www"  # the worker runs as nobody
    openssl enc -aes-128-ctr -nosalt -pass pass:shardline -pbkdf2 -in <(head -c 6144 /dev/zero) 2>/dev/null |
        base64 -w0 >"$work/www/body.txt"
    location="root $work/www;"
    path=/body.txt
    gzip='gzip on; gzip_min_length 0; gzip_types text/plain; gzip_comp_level 6;'
    perf_headers=(--header 'Accept-Encoding: gzip')
    wrk_headers=(-H 'Accept-Encoding: gzip')
    ;;
*)
    echo "VARIANT must be plain or gzip" >&2
    exit 2
    ;;
esac

start_nginx() { # port
    cat >"$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path $work/body;
    $gzip
    server {
        listen 127.0.0.1:$1;
        location / { $location }
    }
}
CONF
    taskset -c "$SERVER_CPU" nginx -p "$work" -c "$work/nginx.conf" &
    bg_pid=$!
    for _ in $(seq 50); do
        sleep 0.1
        if ! kill -0 "$bg_pid" 2>/dev/null; then bg_pid=""; return 1; fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    done
    return 1
}

port=""
for _ in 1 2 3 4 5; do
    candidate=$((20000 + RANDOM % 20000))
    if start_nginx "$candidate"; then port=$candidate; break; fi
done
[[ -n "$port" ]] || { echo "could not start nginx: $(cat "$work/error.log" 2>/dev/null)" >&2; exit 1; }
worker_pid="$(pgrep -P "$bg_pid" | head -1)"
url="http://127.0.0.1:$port$path"

echo "variant $VARIANT: nginx location { $(cut -c1-60 <<<"$location")... } $gzip"
echo "nginx worker $worker_pid on CPU $SERVER_CPU, load on CPU $LOAD_CPU, $CONNECTIONS connections, $DURATION per run, $ROUNDS rounds"
echo "shardline-perf: $perf load --url $url --connections $CONNECTIONS --duration $DURATION --threads 1 --cpus $LOAD_CPU ${perf_headers[*]} --json"
echo "wrk:            taskset -c $LOAD_CPU wrk -t1 -c$CONNECTIONS -d$DURATION ${wrk_headers[*]} $url"
# A short warm-up of the server, not measured.
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d1s "${wrk_headers[@]}" "$url" >/dev/null

# Each run reports the nginx worker's CPU use (it should be ~100%: the server is
# the bottleneck, not the load generator) and the load generator's own.
run_perf() {
    local before rps errors server_pct
    wait_quiet
    before="$(cpu_seconds "$worker_pid")"
    timed_run "$work/perf.json" taskset -c "$LOAD_CPU" "$perf" load --url "$url" \
        --connections "$CONNECTIONS" --duration "$DURATION" --threads 1 --cpus "$LOAD_CPU" "${perf_headers[@]}" --json
    rps="$(json_num "$work/perf.json" rps)"
    errors="$(json_num "$work/perf.json" errors total)"
    server_pct="$(awk -v a="$before" -v b="$(cpu_seconds "$worker_pid")" -v d="$(json_num "$work/perf.json" duration_s)" \
        'BEGIN { printf "%.0f", 100 * (b - a) / d }')"
    perf_rps+=("$rps")
    printf '%-5s %-15s %12.0f requests/s  nginx CPU %3s%%, load CPU %3s%%, errors %s\n' \
        "$r" shardline-perf "$rps" "$server_pct" "$LOAD_CPU_PCT" "$errors"
}
run_wrk() {
    local before rps errors server_pct secs
    wait_quiet
    before="$(cpu_seconds "$worker_pid")"
    timed_run "$work/wrk.out" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "${wrk_headers[@]}" "$url"
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$work/wrk.out")"
    secs="$(awk '/requests in/ { v = $4; sub(/,$/, "", v); if (v ~ /ms$/) { sub(/ms$/, "", v); v /= 1000 } else sub(/s$/, "", v); print v }' "$work/wrk.out")"
    server_pct="$(awk -v a="$before" -v b="$(cpu_seconds "$worker_pid")" -v d="$secs" \
        'BEGIN { printf "%.0f", 100 * (b - a) / d }')"
    errors="$(grep -E 'Socket errors|Non-2xx' "$work/wrk.out" | tr -s ' ' | paste -sd';' || true)"
    wrk_rps+=("$rps")
    printf '%-5s %-15s %12.0f requests/s  nginx CPU %3s%%, load CPU %3s%%, errors %s\n' \
        "$r" wrk "$rps" "$server_pct" "$LOAD_CPU_PCT" "${errors:-0}"
}

perf_rps=()
wrk_rps=()
echo "round tool              requests/s"
for r in $(seq "$ROUNDS"); do
    if (( r % 2 )); then run_perf; run_wrk; else run_wrk; run_perf; fi
done

p="$(median "${perf_rps[@]}")"
w="$(median "${wrk_rps[@]}")"
ratio="$(awk -v p="$p" -v w="$w" 'BEGIN { printf "%.3f", p / w }')"
echo "median shardline-perf $(printf '%.0f' "$p") requests/s, wrk $(printf '%.0f' "$w") requests/s, ratio $ratio"
if awk -v x="$ratio" 'BEGIN { exit !(x > 0.9 && x < 1.1) }'; then
    echo "PASS: within 10%"
else
    echo "FAIL: the medians differ by 10% or more"
    exit 1
fi
