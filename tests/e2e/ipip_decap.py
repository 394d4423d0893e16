#!/usr/bin/env python3
"""Tunnel endpoint for a real server in a namespace whose kernel has no ipip/ip6tnl module.

Receives IPIP (IPv4-in-IPv4, protocol 4), IPv6-in-IPv4 (41), IPv6-in-IPv6 and IPv4-in-IPv6 on
raw sockets, GRE over IPv4 (47) on a raw socket and GUE over IPv4 on a UDP socket (--gue-port),
checks the outer headers strictly, and writes the inner packet into a TUN device so the
server's own stack answers (directly to the client, as with LVS-TUN).

Outer checks (IPv4 outer; IPv6 outer gets what a raw IPv6 socket exposes):
  version 4, IHL 5, protocol 4 or 41, header checksum valid, source = --lb, destination = this
  server's address (--rs), total length = 20 + inner length, TTL = inner TTL (after the
  balancer's decrement), DF copied from an IPv4 inner header; IPv6 outer: source --lb6,
  destination --rs6, hop limit = inner hop limit / TTL.
Counts are written to --stats as "ok N bad M" after every packet; each bad packet is described
on stderr.

Usage: ipip_decap.py --tun NAME --lb IP --rs IP --lb6 IP6 --rs6 IP6 --stats FILE
"""
import argparse
import fcntl
import ipaddress
import os
import select
import socket
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

ap = argparse.ArgumentParser()
ap.add_argument("--tun", required=True)
ap.add_argument("--lb", required=True)
ap.add_argument("--rs", required=True)
ap.add_argument("--lb6", required=True)
ap.add_argument("--rs6", required=True)
ap.add_argument("--stats", required=True)
ap.add_argument("--gue-port", type=int, default=6080)
args = ap.parse_args()

tun = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", args.tun.encode(), IFF_TUN | IFF_NO_PI))

ok = bad = 0


def checksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def inner_ttl_df(inner):
    v = inner[0] >> 4
    if v == 4:
        return inner[8], bool(inner[6] & 0x40)
    if v == 6:
        return inner[7], True
    return None, None


def record(problems, what):
    global ok, bad
    if problems:
        bad += 1
        print(f"ipip_decap: bad {what}: {'; '.join(problems)}", file=sys.stderr, flush=True)
    else:
        ok += 1
    with open(args.stats + ".tmp", "w") as f:
        f.write(f"ok {ok} bad {bad}\n")
    os.replace(args.stats + ".tmp", args.stats)


def outer4(pkt):
    problems = []
    ihl = pkt[0] & 0xF
    if pkt[0] >> 4 != 4 or ihl != 5:
        problems.append(f"version/IHL {pkt[0]:#x}")
    if pkt[9] not in (4, 41):
        problems.append(f"protocol {pkt[9]}")
    if checksum(pkt[:20]) != 0:
        problems.append("header checksum")
    src, dst = socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20])
    if src != args.lb:
        problems.append(f"source {src} != {args.lb}")
    if dst != args.rs:
        problems.append(f"destination {dst} != {args.rs}")
    total = struct.unpack("!H", pkt[2:4])[0]
    inner = pkt[20:total]
    if total != len(pkt):
        problems.append(f"total length {total} != {len(pkt)}")
    ttl, df = inner_ttl_df(inner)
    if ttl is None:
        problems.append("inner is not IP")
    else:
        if pkt[8] != ttl:
            problems.append(f"outer TTL {pkt[8]} != inner {ttl}")
        if (inner[0] >> 4) == 4 and bool(pkt[6] & 0x40) != df:
            problems.append("DF not copied")
    if (pkt[9] == 4) != (inner[:1] and inner[0] >> 4 == 4):
        problems.append("protocol does not match the inner version")
    record(problems, "IPv4 outer")
    return inner


def inner_of(header, proto_field, what):
    """The inner packet after a GRE or GUE header, checked: no flags or options, the inner
    version as the header says (GRE: an EtherType, GUE: an IP protocol)."""
    problems = []
    inner = header[4:]
    v = inner[0] >> 4 if inner else 0
    if what == "GRE":
        if header[0:2] != b"\0\0":
            problems.append(f"GRE flags {header[0:2].hex()}")
        want = {4: 0x0800, 6: 0x86DD}.get(v)
        if struct.unpack("!H", header[2:4])[0] != want:
            problems.append(f"GRE protocol {header[2:4].hex()} for inner version {v}")
    else:
        if header[0] != 0 or header[2:4] != b"\0\0":
            problems.append(f"GUE header {header[:4].hex()}")
        if header[1] != {4: 4, 6: 41}.get(v):
            problems.append(f"GUE protocol {header[1]} for inner version {v}")
    return inner, problems


socks = []
for fam, proto in ((socket.AF_INET, 4), (socket.AF_INET, 41), (socket.AF_INET6, 41), (socket.AF_INET6, 4)):
    s = socket.socket(fam, socket.SOCK_RAW, proto)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
    socks.append((s, fam, proto))
gre = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
socks.append((gre, socket.AF_INET, 47))
gue = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
gue.bind((args.rs, args.gue_port))
socks.append((gue, socket.AF_INET, 17))

while True:
    ready, _, _ = select.select([s for s, _, _ in socks], [], [])
    for s, fam, proto in socks:
        if s not in ready:
            continue
        if proto == 47:
            pkt = s.recv(65535)
            problems = []
            if checksum(pkt[:20]) != 0 or pkt[9] != 47:
                problems.append("outer IPv4 header")
            if socket.inet_ntoa(pkt[12:16]) != args.lb or socket.inet_ntoa(pkt[16:20]) != args.rs:
                problems.append("outer addresses")
            inner, more = inner_of(pkt[20:], None, "GRE")
            record(problems + more, "GRE")
        elif proto == 17:
            payload, addr = s.recvfrom(65535)
            inner, problems = inner_of(payload, None, "GUE")
            if addr[0] != args.lb:
                problems.append(f"source {addr[0]} != {args.lb}")
            record(problems, "GUE")
        elif fam == socket.AF_INET:
            pkt = s.recv(65535)
            inner = outer4(pkt)
        else:
            inner, anc, _, addr = s.recvmsg(65535, 256)
            problems = []
            hop = dst = None
            for level, typ, data in anc:
                if level == socket.IPPROTO_IPV6 and typ == socket.IPV6_HOPLIMIT:
                    hop = struct.unpack("i", data[:4])[0]
                if level == socket.IPPROTO_IPV6 and typ == socket.IPV6_PKTINFO:
                    dst = str(ipaddress.IPv6Address(data[:16]))
            if ipaddress.ip_address(addr[0].split("%")[0]) != ipaddress.ip_address(args.lb6):
                problems.append(f"source {addr[0]} != {args.lb6}")
            if dst is None or ipaddress.ip_address(dst) != ipaddress.ip_address(args.rs6):
                problems.append(f"destination {dst} != {args.rs6}")
            ttl, _ = inner_ttl_df(inner)
            if ttl is None or hop != ttl:
                problems.append(f"outer hop limit {hop} != inner {ttl}")
            record(problems, "IPv6 outer")
        if inner:
            os.write(tun, inner)
