#!/usr/bin/env bash
# The xvs demo: a namespace rig with a client, the balancer and three real servers (HTTP); xvsd
# runs on AF_XDP in the balancer's namespace and xvsadm configures it with ipvsadm's commands:
# the VIP 10.0.0.1:80 balanced over the servers with NAT (rr). The client fetches a page six
# times and each answer names the server that sent it; xvsadm then shows the counters and the
# connection table. Finally the offline replay runs a shipped capture through the same engine.
# Usage (as root): scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_cargo
install_packages clang m4 libelf-dev zlib1g-dev pkg-config iproute2 ethtool curl tcpdump iputils-ping
cargo build --release -q -p xvsd -p xvsadm

RIG_ID=
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "$RIG_ID" ] && scripts/rig.sh down "$RIG_ID"
    [ -n "${tmp:-}" ] && rm -rf "$tmp"
}
trap cleanup EXIT
tmp=$(mktemp -d)

eval "$(scripts/rig.sh up nat)"
P="xvs$RIG_ID"
echo "== rig $P: client 10.9.0.2 -> VIP 10.0.0.1 -> real servers 192.168.10.1-3 (namespaces $P-*)"
for n in 1 2 3; do
    ip netns exec "$P-r$n" python3 tests/e2e/server.py "rs$n" >/dev/null 2>&1 &
    pids+=($!)
done
# Wait for the servers to listen (bounded).
for n in 1 2 3; do
    for _ in $(seq 50); do
        ip netns exec "$P-r$n" ss -ltn 'sport = :80' | grep -q LISTEN && break
        sleep 0.1
    done
done
export XVS_CONTROL="$tmp/xvsd.sock"
ip netns exec "$P-l" target/release/xvsd --interface "xl$RIG_ID" --interface "xs$RIG_ID" --control "$XVS_CONTROL" \
    2> "$tmp/xvsd.log" &
xvsd_pid=$!
pids+=("$xvsd_pid")
for _ in $(seq 100); do grep -q "balancing on" "$tmp/xvsd.log" && break; sleep 0.1; done
cat "$tmp/xvsd.log"
adm() { echo "# xvsadm $*"; target/release/xvsadm "$@"; }
echo "== configuring with xvsadm"
adm -A -t 10.0.0.1:80 -s rr
adm -a -t 10.0.0.1:80 -r 192.168.10.1:80 -m
adm -a -t 10.0.0.1:80 -r 192.168.10.2:80 -m
adm -a -t 10.0.0.1:80 -r 192.168.10.3:80 -m
adm -L -n
echo "== the XDP program on the balancer's interfaces"
ip netns exec "$P-l" ip -brief link show | grep -E "^x[ls]$RIG_ID" || true
ip netns exec "$P-l" ip link show "xl$RIG_ID" | grep -o "prog/xdp.*" || true
echo "== six HTTP requests from the client to http://10.0.0.1/"
for i in 1 2 3 4 5 6; do
    printf "request %d answered by: " "$i"
    ip netns exec "$P-c" curl -s -m 5 http://10.0.0.1/ || echo "(no answer)"
done
echo "== a 5 MB download and a 5 MB upload through xvsd"
ip netns exec "$P-c" curl -s -m 20 -o /dev/null -w "download: %{size_download} bytes at %{speed_download} B/s\n" \
    "http://10.0.0.1/blob?size=5000000"
head -c 5000000 /dev/urandom > "$tmp/up.bin"
printf "upload: server, sha256, bytes = "
ip netns exec "$P-c" curl -s -m 20 --data-binary @"$tmp/up.bin" http://10.0.0.1/upload
printf "local sha256                    = %s\n" "$(sha256sum "$tmp/up.bin" | cut -d' ' -f1)"
echo "== what xvsadm shows"
adm -L -n --stats
adm -L -n -c | head -8
echo "== stopping xvsd (SIGTERM): its counters"
kill -TERM "$xvsd_pid"
wait "$xvsd_pid" || true
tail -n +3 "$tmp/xvsd.log"
ip netns exec "$P-l" ip link show "xl$RIG_ID" | grep -q "prog/xdp" && echo "XDP program still attached!" || echo "XDP program detached"

echo
echo "== offline replay of tests/data/demo.pcap with the same kind of rules"
target/release/xvsd replay \
    --rules tests/data/demo.rules \
    --in tests/data/demo.pcap --out "$tmp/out.pcap" --verdicts "$tmp/verdicts.jsonl" \
    --local-mac 02:00:00:00:00:1b --local-ip 10.0.0.254 \
    --neigh 192.168.10.1=02:00:00:00:aa:01 \
    --neigh 192.168.10.2=02:00:00:00:aa:02 \
    --neigh 192.168.10.3=02:00:00:00:aa:03 \
    --gateway-mac 02:00:00:00:00:99
echo "first output frames (tcpdump):"
tcpdump -nn -e -r "$tmp/out.pcap" 2>/dev/null | cut -c 17- | head -5
