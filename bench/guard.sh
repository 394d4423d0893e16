#!/usr/bin/env bash
# Instructions per packet of the workers' batch path (callgrind on profile_established),
# DR/NAT/tunnel/NAT replies at 10 K flows and DR/NAT/tunnel at 1 M: the guard of a change that
# must not alter the engine's cost. Usage: bench/guard.sh [PROFILE_ESTABLISHED_BINARY]
# (default: builds target/release/examples/profile_established). Prints one line per case.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
if [[ -z $bin ]]; then
    cargo build --release -q -p xvs-bench --example profile_established
    bin=target/release/examples/profile_established
fi
command -v valgrind >/dev/null || apt-get install -y -q valgrind >/dev/null
n=20000
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for case in "10000 dr" "10000 nat" "10000 tun" "10000 nat-reply" "1000000 dr" "1000000 nat" "1000000 tun"; do
    set -- $case
    valgrind --tool=callgrind --callgrind-out-file="$out/cg" \
        --toggle-collect="${GUARD_FN:-*Engine>::process}" "$bin" "$n" "$1" prefetch "$2" >/dev/null 2>"$out/log"
    ir=$(awk '/^summary:/ {print $2}' "$out/cg")
    # profile_established runs 20 rounds of N packets.
    awk -v ir="$ir" -v n="$n" -v f="$1" -v m="$2" \
        'BEGIN { printf "%-10s %-8s %8.1f instructions/packet\n", m, f, ir / (20 * n) }'
done
