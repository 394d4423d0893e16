#!/usr/bin/env bash
# The xvs demo. Today: the offline replay. A capture of three HTTP clients talking to the VIP
# 10.0.0.1:80 goes through xvs's data path (the same code the AF_XDP workers run), configured
# by an ipvsadm rule file; xvs NATs each connection to one of three real servers (rr) and writes
# the frames it would transmit. Usage: scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_cargo
install_packages tcpdump
cargo build --release -q -p xvsd

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "== rules (ipvsadm -R format): tests/data/demo.rules"
cat tests/data/demo.rules
echo
echo "== replaying tests/data/demo.pcap through xvs"
target/release/xvsd replay \
    --rules tests/data/demo.rules \
    --in tests/data/demo.pcap --out "$out/out.pcap" --verdicts "$out/verdicts.jsonl" \
    --local-mac 02:00:00:00:00:1b --local-ip 10.0.0.254 \
    --neigh 192.168.10.1=02:00:00:00:aa:01 \
    --neigh 192.168.10.2=02:00:00:00:aa:02 \
    --neigh 192.168.10.3=02:00:00:00:aa:03 \
    --gateway-mac 02:00:00:00:00:99
echo
echo "== input frames (what arrived)"
tcpdump -nn -e -r tests/data/demo.pcap 2>/dev/null | cut -c 17-
echo
echo "== output frames (what xvs transmits)"
tcpdump -nn -e -r "$out/out.pcap" 2>/dev/null | cut -c 17-
echo
echo "== verdict per input frame"
cat "$out/verdicts.jsonl"
