#!/usr/bin/env bash
# A/B of io_uring's IORING_SETUP_COOP_TASKRUN for shardline's shards.
#
# Why: glommio 0.9 sets its rings up with no flags. Every socket wait is a
# one-shot io_uring poll; when data arrives, the kernel queues the
# completion as task_work for the shard's thread and, if that thread is
# running, interrupts it with an IPI to run it. A gateway waits twice per
# request (client, upstream), and `perf record` of a loaded gateway shows
# ~20% of its CPU in asm_sysvec_reschedule_ipi + irqentry_exit_to_user_mode.
# With COOP_TASKRUN (Linux 5.19+) the task_work waits for the thread's next
# transition into the kernel (it makes one per send/recv anyway): no IPI.
#
# This script does not change the repository. It copies glommio from the
# local cargo registry to a scratch directory, adds the flag there (read at
# run time from GLOMMIO_COOP, so one binary serves both arms), builds
# shardline against it with `cargo --config patch...` into its own target
# directory, and measures the proxy (shardline in front of nginx `return
# 200`) and /plaintext with and without the flag, interleaved.
#
# Usage: perf/coop-taskrun-ab.sh [rounds]      (default 5; 3 s per run)
set -euo pipefail
source "$(dirname "$0")/validate/lib.sh"
rounds="${1:-5}"
scratch_and_cleanup
need nginx nginx-light
build_perf

src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/glommio-0.9.0 2>/dev/null | head -1)"
if [[ -z "$src" ]]; then
    (cd "$root" && cargo fetch -q)
    src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/glommio-0.9.0 | head -1)"
fi
cp -r "$src" "$work/glommio"
# The two edits: the flag bits (include/uapi/linux/io_uring.h) and the
# main/latency ring setup using them when GLOMMIO_COOP is set.
sed -i 's|        const ATTACH_WQ = 1 << 5;|        const ATTACH_WQ = 1 << 5;\n        const COOP_TASKRUN = 1 << 8;|' \
    "$work/glommio/src/iou/mod.rs"
sed -i 's|            ring: iou::IoUring::new(size as _)?,|            ring: iou::IoUring::new_with_flags(size as _, if std::env::var_os("GLOMMIO_COOP").is_some() { iou::SetupFlags::COOP_TASKRUN } else { iou::SetupFlags::empty() }, iou::SetupFeatures::empty())?,|' \
    "$work/glommio/src/sys/uring.rs"
grep -q COOP_TASKRUN "$work/glommio/src/sys/uring.rs" || { echo "patch did not apply" >&2; exit 1; }
target="$root/target/coop-taskrun"
echo "building shardline against the patched glommio (target/coop-taskrun)" >&2
(cd "$root" && CARGO_TARGET_DIR="$target" cargo build --release -q -p shardline \
    --config "patch.crates-io.glommio.path=\"$work/glommio\"")
bin="$target/release/shardline"

up_port=$((20000 + RANDOM % 20000))
mkdir -p "$work/ngx"
cat >"$work/upstream.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/ngx/up.pid;
error_log $work/ngx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off; keepalive_requests 1000000;
    client_body_temp_path $work/ngx/cb; proxy_temp_path $work/ngx/p;
    fastcgi_temp_path $work/ngx/f; uwsgi_temp_path $work/ngx/u; scgi_temp_path $work/ngx/s;
    server { listen 127.0.0.1:$up_port backlog=1024;
             location / { default_type text/plain; return 200 "Hello, World!"; } }
}
EOF
taskset -c 1 nginx -c "$work/upstream.conf" -p "$work/ngx" -e "$work/ngx/error.log" &
ngx_pid=$!
trap 'kill $ngx_pid 2>/dev/null || true; if [[ -n "$bg_pid" ]]; then kill "$bg_pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
cat >"$work/gw.toml" <<EOF
[server]
listen = "127.0.0.1:0"
admin_listen = "off"
shards = 1
cpus = "0"
data_dir = "$work/data"
[[upstreams]]
name = "app"
targets = ["127.0.0.1:$up_port"]
pool_size_per_shard = 64
[[routes]]
name = "plaintext"
method = "GET"
path = "/plaintext"
respond = { status = 200, body = "Hello, World!", content_type = "text/plain" }
[[routes]]
name = "proxy"
path = "/proxy/{*rest}"
upstream = "app"
strip_prefix = "/proxy"
EOF

run_arm() { # arm path -> "rps cpu_us"
    if [[ $1 == coop ]]; then export GLOMMIO_COOP=1; else unset GLOMMIO_COOP; fi
    taskset -c 0 "$bin" --config "$work/gw.toml" >"$work/sl.out" 2>&1 &
    bg_pid=$!
    local addr=""
    for _ in $(seq 100); do
        addr="$(sed -n 's/^shardline ready listen=\([^ ]*\).*/\1/p' "$work/sl.out")"
        [[ -n $addr ]] && break
        sleep 0.05
    done
    taskset -c 1 "$perf" load --url "http://$addr$2" --connections 64 --duration 3s --warmup 1s \
        --threads 1 --cpus 1 --server-pid "$bg_pid" --json >"$work/run.json"
    kill "$bg_pid"
    wait "$bg_pid" 2>/dev/null || true
    bg_pid=""
    unset GLOMMIO_COOP
    echo "$(json_num "$work/run.json" rps) $(json_num "$work/run.json" server_cpu per_request_us)"
}

for path in /proxy/plaintext /plaintext; do
    declare -A rps=() cpu=()
    for r in $(seq "$rounds"); do
        for arm in base coop; do
            read -r x y < <(run_arm "$arm" "$path")
            rps[$arm]+="$x "
            cpu[$arm]+="$y "
            echo "round $r $path $arm: $x req/s, $y us CPU/request" >&2
        done
    done
    for arm in base coop; do
        # shellcheck disable=SC2086
        printf '%-18s %-5s median %10.0f req/s  %6.2f us CPU/request\n' "$path" "$arm" \
            "$(median ${rps[$arm]})" "$(median ${cpu[$arm]})"
    done
    unset rps cpu
done
