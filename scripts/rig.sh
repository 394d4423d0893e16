#!/usr/bin/env bash
# Namespace rigs for xvs: clients, a balancer and real servers on veth pairs, nothing routed out.
#
#   scripts/rig.sh up MODE [Q]  # MODE: nat | dr | tun; Q = queues of the balancer's veths
#                               # (default 1); prints the rig's environment (eval it)
#   scripts/rig.sh down ID    # removes the rig's namespaces (also safe to call twice)
#
# Every namespace is named xvs<ID>-<role> with a per-rig random ID, so rigs never collide.
# Addresses (all private, all inside the rig):
#   client  10.9.0.2/24  fd09::2/64           (NAT: routes the VIPs via the balancer)
#   lb      10.9.0.1/24  fd09::1/64  client side; 192.168.10.254/24 fd01::fe/64 server side (NAT)
#   VIP     10.0.0.1     fd00::1
#   rs N    192.168.10.N/24  fd01::N/64    (N = 1..3)
# In DR and tunnel mode client, balancer and servers share one L2 segment (10.9.0.0/24,
# fd09::/64): the client reaches the VIP through the balancer, servers answer it directly.
set -euo pipefail

ns() { local n=$1; shift; ip netns exec "$n" "$@"; }

veth_pair() { # veth_pair NAME_A NS_A NAME_B NS_B [QUEUES]
    local q=${5:-1}
    ip link add "$1" numtxqueues "$q" numrxqueues "$q" type veth peer name "$3" numtxqueues "$q" numrxqueues "$q"
    ip link set "$1" netns "$2"
    ip link set "$3" netns "$4"
    ns "$2" ip link set "$1" up
    ns "$4" ip link set "$3" up
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PASS_OBJ=$ROOT/target/xdp-pass.bpf.o

xdp_pass_obj() { # compile scripts/xdp-pass.bpf.c once (clang and libbpf's headers, as the build)
    [ "$PASS_OBJ" -nt "$ROOT/scripts/xdp-pass.bpf.c" ] && return 0
    mkdir -p "$ROOT/target"
    local inc
    inc=$(ls -d "$ROOT"/target/*/build/libbpf-sys-*/out/include 2>/dev/null | head -1)
    [ -n "$inc" ] || inc=/usr/include
    clang -O2 -target bpf -I"$inc" -I/usr/include/"$(uname -m)"-linux-gnu \
        -c "$ROOT/scripts/xdp-pass.bpf.c" -o "$PASS_OBJ.$$" && mv "$PASS_OBJ.$$" "$PASS_OBJ"
}

napi_peer() { # napi_peer NS IF: the far end of a balancer's veth takes XDP frames (see the .c)
    xdp_pass_obj
    ns "$1" ip -force link set dev "$2" xdp obj "$PASS_OBJ" sec xdp.frags
    # And waits when the balancer's receive ring is full instead of dropping, as a NIC's
    # transmit ring does (a veth whose peer runs NAPI has a ring of 256 frames; with a qdisc
    # the sender is held back, without one the frame is lost).
    ns "$1" tc qdisc replace dev "$2" root pfifo limit 1000
}

nooffload() { # turn off TX checksum offload and segmentation on a sender's veth
    ns "$1" ethtool -K "$2" tx off tso off gso off >/dev/null 2>&1 || true
}

client_side() { # client_side PREFIX ID: client and balancer addresses, VIP routes via the balancer
    local P=$1 id=$2
    ns "$P-c" ip addr add 10.9.0.2/24 dev "xc$id"
    ns "$P-c" ip -6 addr add fd09::2/64 dev "xc$id" nodad
    ns "$P-l" ip addr add 10.9.0.1/24 dev "xl$id"
    ns "$P-l" ip -6 addr add fd09::1/64 dev "xl$id" nodad
    ns "$P-c" ip route add 10.0.0.0/24 via 10.9.0.1
    ns "$P-c" ip -6 route add fd00::/64 via fd09::1
}

up() {
    local mode=$1 q=${2:-1}
    local id; id=$(printf '%04x' $(( (RANDOM << 1 ^ $$) & 0xffff )))
    local P=xvs$id
    for r in c l w r1 r2 r3; do ip netns add "$P-$r"; ns "$P-$r" ip link set lo up; done
    # The bridge stands for a switch: no netfilter on bridged frames (per namespace, on by
    # default where br_netfilter is built in), or every path pays for it on the receivers' side.
    ns "$P-w" sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 \
        net.bridge.bridge-nf-call-arptables=0 2>/dev/null || true
    ns "$P-w" ip link add br0 type bridge
    ns "$P-w" ip link set br0 up
    # Client.
    if [ "$mode" = nat ]; then
        veth_pair "xc$id" "$P-c" "xl$id" "$P-l" "$q"
        client_side "$P" "$id"
        # Server side: balancer and real servers on the bridge.
        veth_pair "xs$id" "$P-l" "xw$id" "$P-w" "$q"
        ns "$P-w" ip link set "xw$id" master br0
        ns "$P-l" ip addr add 192.168.10.254/24 dev "xs$id"
        ns "$P-l" ip -6 addr add fd01::fe/64 dev "xs$id" nodad
        for n in 1 2 3; do
            veth_pair "xr$n$id" "$P-r$n" "xb$n$id" "$P-w"
            ns "$P-w" ip link set "xb$n$id" master br0
            ns "$P-r$n" ip addr add "192.168.10.$n/24" dev "xr$n$id"
            ns "$P-r$n" ip -6 addr add "fd01::$n/64" dev "xr$n$id" nodad
            ns "$P-r$n" ip route add default via 192.168.10.254
            ns "$P-r$n" ip -6 route add default via fd01::fe
            nooffload "$P-r$n" "xr$n$id"
        done
        nooffload "$P-c" "xc$id"
        napi_peer "$P-c" "xc$id"
        napi_peer "$P-w" "xw$id"
        echo "RIG_ID=$id RIG_MODE=nat RIG_LB_IFS='xl$id xs$id'"
    else
        # One segment: client, balancer and servers on the bridge.
        veth_pair "xc$id" "$P-c" "xa$id" "$P-w"
        veth_pair "xl$id" "$P-l" "xm$id" "$P-w" "$q"
        ns "$P-w" ip link set "xa$id" master br0
        ns "$P-w" ip link set "xm$id" master br0
        client_side "$P" "$id"
        nooffload "$P-c" "xc$id"
        for n in 1 2 3; do
            veth_pair "xr$n$id" "$P-r$n" "xb$n$id" "$P-w"
            ns "$P-w" ip link set "xb$n$id" master br0
            ns "$P-r$n" ip addr add "10.9.0.$((10 + n))/24" dev "xr$n$id"
            ns "$P-r$n" ip -6 addr add "fd09::$((10 + n))/64" dev "xr$n$id" nodad
            nooffload "$P-r$n" "xr$n$id"
            # The VIP on the server's loopback; never answer ARP/ND for it. Tunnelled packets
            # arrive on a TUN device (see tests/e2e/ipip_decap.py): no reverse-path filter.
            ns "$P-r$n" ip addr add 10.0.0.1/32 dev lo
            ns "$P-r$n" ip -6 addr add fd00::1/128 dev lo
            ns "$P-r$n" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
            ns "$P-r$n" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
        done
        napi_peer "$P-w" "xm$id"
        echo "RIG_ID=$id RIG_MODE=$mode RIG_LB_IFS='xl$id'"
    fi
}

down() {
    local id=$1
    # (s: a second balancer some tests add to the segment.)
    for r in c l w r1 r2 r3 s; do ip netns del "xvs$id-$r" 2>/dev/null || true; done
}

case "${1:-}" in
    up) up "${2:?mode}" "${3:-1}" ;;
    down) down "${2:?id}" ;;
    *) echo "usage: $0 up nat|dr|tun [QUEUES] | down ID" >&2; exit 2 ;;
esac
