#!/usr/bin/env bash
# The whole benchmark of the performance report, in one run (root, Debian 12): installs what it
# needs, builds in release mode, then on veth-namespace rigs it creates and removes itself:
#   1. end to end: ceiling, bare AF_XDP forwarder, xvsd DR/TUN/NAT (established, new),
#      kernel forwarding and nftables DNAT             -> target/bench-e2e.{md,csv}
#      and xvsd DR against the bare forwarder in alternating bursts -> target/bench-e2e-paired.md
#   2. added latency (xvsd, xvsd --busy-poll, kernel)  -> target/bench-latency.csv
#      goodput of full-size TCP (iperf3): NAT and DR, 1 and 8 streams, both directions, xvsd
#      and xvsd --busy-poll beside the kernel; at MTU 1500 and 9000 -> target/bench-goodput*.md
#   3. one and two worker queues                       -> target/bench-e2e-scaling.md
#   4. memory with 0, 1 M and 10 M connections         -> target/bench-e2e-memory.md
#   5. under a flood: new flows, 5.5 x a 1 M-entry table, through xvsd DR, the bare forwarder and
#      nftables DNAT (conntrack at 1 M)                -> target/bench-e2e-flood.md
#      real clients under a SYN flood, xvsd NAT against nftables DNAT -> target/bench-flood-clients.md
#   6. the engine alone, and the machine's floor (criterion) -> target/criterion/
#   7. plots                                           -> docs/img/*.png
# Usage: bench/run.sh [--quick]   (--quick: steps 1, 2 and 7 only, about 32 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

quick=0
[ "${1:-}" = "--quick" ] && quick=1
[ "$(id -u)" -eq 0 ] || { echo "bench/run.sh: needs root (namespaces, XDP)" >&2; exit 1; }
require_cargo
install_packages clang m4 libelf-dev zlib1g-dev pkg-config iproute2 ethtool python3 nftables \
    curl iperf3 fonts-dejavu-core

cargo build --release -q -p xvs-bench -p xvsd -p xvsadm
echo "== end to end"
python3 bench/e2e/run.py
echo "== xvsd DR and the bare forwarder side by side, alternating bursts"
python3 bench/e2e/run.py --paired
echo "== latency"
python3 bench/e2e/latency.py
echo "== goodput (iperf3)"
python3 bench/e2e/goodput.py
python3 bench/e2e/goodput.py --mtu 9000 --out target/bench-goodput-mtu9000
if [ "$quick" -eq 0 ]; then
    echo "== worker queues"
    python3 bench/e2e/run.py --scaling
    echo "== memory"
    python3 bench/e2e/run.py --memory
    echo "== under a flood: new flows through a full table"
    python3 bench/e2e/run.py --flood
    echo "== under a flood: real clients"
    python3 bench/e2e/clients.py
    # The engine's heap as xvsd runs it: on transparent huge pages (crates/xvsd/src/malloc.rs).
    tunables=glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1
    echo "== engine (criterion)"
    GLIBC_TUNABLES=$tunables cargo bench -q -p xvs-bench --bench engine -- --noplot
    echo "== the machine's floor (criterion)"
    GLIBC_TUNABLES=$tunables cargo bench -q -p xvs-bench --bench floor -- --noplot
fi
echo "== plots"
./target/release/xvs-plot --e2e target/bench-e2e.csv --latency target/bench-latency.csv \
    --goodput target/bench-goodput-plot.csv --out docs/img
