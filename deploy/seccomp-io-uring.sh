#!/bin/sh
# Writes a seccomp profile for `docker run --security-opt seccomp=FILE`:
# Docker's default profile with the io_uring system calls allowed.
#
# Usage: deploy/seccomp-io-uring.sh [default-profile.json] > seccomp-io-uring.json
# Without an argument it fetches the default profile of moby's master
# branch; pass the file of your Docker version to match it exactly.
# Needs jq.
set -eu
src=${1:-}
if [ -z "$src" ]; then
    src=$(mktemp)
    trap 'rm -f "$src"' EXIT
    curl -fsSL https://raw.githubusercontent.com/moby/moby/master/profiles/seccomp/default.json -o "$src"
fi
jq '.syscalls += [{"names": ["io_uring_setup", "io_uring_enter", "io_uring_register"], "action": "SCMP_ACT_ALLOW"}]' "$src"
