#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (fuzz/corpus/TARGET/): valid inputs that reach
each part of a parser, for AFL to mutate. Run from anywhere; rewrites the seeds."""
import ipaddress
import os
import socket
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
LB = bytes([2, 0, 0, 0, 0, 1])
CLIENT_MAC = bytes([2, 0, 0, 0, 0, 2])


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip4(src, dst, proto, payload, ttl=64, df=True):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000 if df else 0, ttl, proto, 0,
                    ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload


def l4(src, dst, proto, seg, v6=False):
    a, b = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    pseudo = a + b + (struct.pack("!IxxxB", len(seg), proto) if v6 else struct.pack("!xBH", proto, len(seg)))
    c = csum(pseudo + seg)
    off = 16 if proto == 6 else 6
    return seg[:off] + struct.pack("!H", c) + seg[off + 2:]


def tcp(src, dst, sport, dport, flags, data=b"", v6=False):
    seg = struct.pack("!HHIIBBHHH", sport, dport, 1000, 2000 if flags & 0x10 else 0, 5 << 4, flags, 65535, 0, 0) + data
    return l4(src, dst, 6, seg, v6)


def udp(src, dst, sport, dport, data, v6=False):
    seg = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    return l4(src, dst, 17, seg, v6)


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF


def sctp(sport, dport, chunks):
    """An SCTP packet of (type, value) chunks, its CRC32c filled in."""
    body = b""
    for t, v in chunks:
        c = struct.pack("!BBH", t, 0, 4 + len(v)) + v
        body += c + b"\0" * (-len(c) % 4)
    hdr = struct.pack("!HHII", sport, dport, 0x12345678, 0)
    return hdr[:8] + struct.pack("<I", crc32c(hdr + body)) + body


def eth(payload, v6=False, src=CLIENT_MAC):
    return LB + src + struct.pack("!H", 0x86DD if v6 else 0x0800) + payload


def ip6(src, dst, nh, payload, hop=64):
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, hop, ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed) + payload


def t4(src, dst, sport, dport, flags, data=b"", ttl=64):
    return eth(ip4(src, dst, 6, tcp(src, dst, sport, dport, flags, data), ttl))


def u4(src, dst, sport, dport, data):
    return eth(ip4(src, dst, 17, udp(src, dst, sport, dport, data)))


def t6(src, dst, sport, dport, flags, data=b""):
    return eth(ip6(src, dst, 6, tcp(src, dst, sport, dport, flags, data, True)), True)


def u6(src, dst, sport, dport, data):
    return eth(ip6(src, dst, 17, udp(src, dst, sport, dport, data, True)), True)


def records(*frames):
    """Records of the frames target: [clock step][length][frame]."""
    out = b""
    for f in frames:
        step, f = f if isinstance(f, tuple) else (0, f)
        out += struct.pack("!BH", step, len(f)) + f
    return out


SYN, ACK, PSH, FIN, RST = 0x02, 0x10, 0x08, 0x01, 0x04
C = "10.9.0.2"
seeds = {
    "frames": {
        "dr-handshake": records(t4(C, "10.0.0.1", 40000, 80, SYN), t4(C, "10.0.0.1", 40000, 80, ACK),
                                t4(C, "10.0.0.1", 40000, 80, ACK | PSH, b"GET / HTTP/1.0\r\n\r\n"),
                                t4(C, "10.0.0.1", 40000, 80, FIN | ACK), (61, t4(C, "10.0.0.1", 40000, 80, ACK))),
        "nat-both-ways": records(t4(C, "10.0.0.2", 40001, 80, SYN),
                                 eth(ip4("192.168.10.1", C, 6, tcp("192.168.10.1", C, 8080, 40001, SYN | ACK))),
                                 eth(ip4("192.168.10.2", C, 6, tcp("192.168.10.2", C, 8080, 40001, SYN | ACK))),
                                 t4(C, "10.0.0.2", 40001, 80, RST)),
        "tunnels": records(t4(C, "10.0.0.3", 40002, 443, SYN), t4(C, "10.0.0.4", 40003, 80, SYN),
                           t4(C, "10.0.0.5", 40004, 80, SYN), t4(C, "10.0.0.3", 40002, 443, ACK, b"x" * 1460)),
        "udp": records(u4(C, "10.0.0.1", 5353, 53, b"query"),
                       eth(ip4("192.168.10.1", C, 17, udp("192.168.10.1", C, 53, 5353, b"answer"))),
                       (200, u4(C, "10.0.0.1", 5353, 53, b"again"))),
        "ipv6": records(t6("fd09::2", "fd00::1", 40005, 80, SYN), t6("fd09::2", "fd00::1", 40005, 80, ACK),
                        u6("fd09::2", "fd00::1", 5353, 53, b"query6")),
        "fwmark": records((1, t4(C, "10.0.0.9", 40006, 22, SYN)), (1, t4(C, "10.0.0.9", 40006, 22, ACK))),
        "ttl-and-size": records(t4(C, "10.0.0.1", 40007, 80, SYN, ttl=1),
                                t4(C, "10.0.0.4", 40008, 80, SYN), t4(C, "10.0.0.4", 40008, 80, ACK, b"y" * 1460)),
        "icmp-error": records(t4(C, "10.0.0.2", 40009, 80, SYN),
                              eth(ip4("192.168.10.1", C, 1, (lambda q: struct.pack("!BBHHH", 3, 4, 0, 0, 1400) + q)(
                                  ip4(C, "192.168.10.1", 6, tcp(C, "192.168.10.1", 40009, 8080, SYN))[:28])))),
        "sctp": records(eth(ip4(C, "10.0.0.6", 132, sctp(40010, 3868, [(1, b"\0" * 16)]))),
                        eth(ip4("192.168.10.1", C, 132, sctp(3869, 40010, [(2, b"\0" * 24)]))),
                        eth(ip4(C, "10.0.0.6", 132, sctp(40010, 3868, [(10, b"cookie"), (6, b"")]))),
                        eth(ip4(C, "10.0.0.6", 132, sctp(40011, 3868, [(0, b"\0" * 16)]))),
                        eth(ip4(C, "10.0.0.6", 132, sctp(40012, 3868, [])))),
        "sip": records(u4(C, "10.0.0.7", 5060, 5060, b"INVITE sip:a@b SIP/2.0\r\nCall-ID: c1@h\r\n\r\n"),
                       u4(C, "10.0.0.7", 5061, 5060, b"BYE sip:a@b SIP/2.0\ni :\n c1@h\n"),
                       u4(C, "10.0.0.7", 5062, 5060, b"X\r\nCall-ID: " + b"a" * 300 + b"\r\n")),
        "garbage": records(b"\x02\x00\x00\x00\x00\x01" + b"\x00" * 8, b"\xff" * 60, b""),
    },
    "ipvsadm": {
        "restore": b"-A -t 10.0.0.1:80 -s wrr -p 60 -M 255.255.255.0\n-a -t 10.0.0.1:80 -r 10.1.0.1:80 -m -w 3 -x 100 -y 50\n"
                   b"-A -u [fd00::1]:53 -s sh -b sh-port,sh-fallback\n-a -u [fd00::1]:53 -r [fd01::1]:53 -i --tun-type gue --tun-port 6080\n"
                   b"-A -f 1 -s mh -b mh-fallback\n-a -f 1 -r 10.1.0.2 -g\n--set 900 120 300\n",
        "edit": b"-E -t 10.0.0.1:80 -s lc\n-A -t 10.0.0.1:80 -s rr\n-e -t 10.0.0.1:80 -r 10.1.0.1:80 -w 0\n-d -t 10.0.0.1:80 -r 10.1.0.1:80\n-D -t 10.0.0.1:80\n-Z\n-C\n",
        "daemon": b"--start-daemon master --mcast-interface eth0 --syncid 7\n--start-daemon backup --mcast-interface eth1 --mcast-group 224.0.0.81 --mcast-port 8848 --mcast-ttl 2 --sync-maxlen 1472\n",
        "marks": b"*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -i eth0 -s 10.9.0.0/16 -d 10.0.0.1/32 -p tcp -m multiport --dports 80,443,8000:8010 -j MARK --set-xmark 0x1/0xffffffff\n-A PREROUTING -d fd00::1/128 -p udp --dport 53 -j MARK --set-mark 2/0xff\nCOMMIT\n",
        "errors": b"-A -t 10.0.0.1 -s nosuch\n-a -t 10.0.0.1:80 -r\n-A -t [::1]:80 -s rr -p -1\n--help\n",
    },
    "state": {},
}


def frame_bytes(payload):
    return b"XVS1" + struct.pack("!I", len(payload)) + payload


def strings(*ss):
    return b"".join(struct.pack("!I", len(s)) + s for s in ss)


seeds["control"] = {
    "request-list": frame_bytes(struct.pack("!I", 2) + strings(b"-L", b"-n") + strings(b"")),
    "request-restore": frame_bytes(struct.pack("!I", 1) + strings(b"-R") + strings(b"-A -t 10.0.0.1:80 -s rr\n")),
    "response": frame_bytes(struct.pack("!i", 0) + strings(b"IP Virtual Server version 1.2.1\n", b"")),
    "bad-magic": b"HTTP/1.0" + b"\0" * 8,
}
STATE = b"-C\n-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.1.0.1:80 -m -w 1\n--set 900 120 300\n"
HEADER = b"# xvs state file: ipvsadm -R input; the last line checks the rest\n"
seeds["state"] = {
    "old-format": STATE,
    "sealed": HEADER + STATE + b"# end: crc32 %08x length %d\n" % (zlib.crc32(HEADER + STATE), len(HEADER + STATE)),
}
def sync_v4(proto, flags, state, c, cport, v, vport, d, dport, fwmark=0, timeout=900, opts=b""):
    body = struct.pack("!BBHIHHHHII", 0, proto, 36 + len(opts), flags, state, cport, vport, dport, fwmark, timeout)
    return body + bytes(map(int, c.split("."))) + bytes(map(int, v.split("."))) + bytes(map(int, d.split("."))) + opts


def sync_v6(proto, flags, state, c, cport, v, vport, d, dport, fwmark=0, timeout=300):
    body = struct.pack("!BBHIHHHHII", 1, proto, 72, flags, state, cport, vport, dport, fwmark, timeout)
    return body + b"".join(socket.inet_pton(socket.AF_INET6, a) for a in (c, v, d))


def sync_msg(syncid, *records):
    out = b""
    for r in records:
        out += b"\0" * (-len(out) % 4) + r
    return struct.pack("!BBHBBH", 0, syncid, 8 + len(out), len(records), 1, 0) + out


SEQ = bytes([1, 24]) + b"\xab" * 24
seeds["sync"] = {
    # Records of the fuzz services: DR, NAT with sequence data, a template, IPv6, fwmark.
    "v1": sync_msg(7, sync_v4(6, 0x83, 1, "10.9.0.5", 40000, "10.0.0.1", 80, "10.9.0.11", 80),
                   sync_v4(6, 0x400, 1, "10.9.0.6", 40001, "10.0.0.2", 80, "192.168.10.1", 8080, opts=SEQ),
                   sync_v4(6, 0x1000, 0, "10.9.0.0", 0, "10.0.0.2", 80, "192.168.10.2", 8080, timeout=300),
                   sync_v6(17, 0x3, 0, "fd09::5", 5000, "fd00::1", 53, "fd09::12", 53),
                   sync_v4(6, 0x83, 1, "10.9.0.7", 40002, "10.0.0.9", 22, "10.9.0.16", 22, fwmark=7)),
    "v0": struct.pack("!BBH", 1, 3, 28) + struct.pack("!BBHHH", 0, 6, 40000, 80, 80)
          + bytes([10, 9, 0, 5, 10, 0, 0, 1, 10, 9, 0, 11]) + struct.pack("!HH", 0x83, 1),
    "dump": (lambda m: struct.pack("!H", len(m)) + m)(
        sync_msg(0, sync_v4(6, 0x83, 1, "10.9.0.5", 40003, "10.0.0.1", 80, "10.9.0.12", 80))),
    # A SIP template (PE data, then the engine's name) and an SCTP association.
    "pe-sip-and-sctp": sync_msg(0, sync_v4(17, 0x1000, 0, "10.9.0.0", 0, "10.0.0.7", 5060, "10.9.0.18", 5060,
                                           timeout=60, opts=bytes([2, 4]) + b"c1@h" + bytes([3, 3]) + b"sip"),
                                sync_v4(132, 0x3, 8, "10.9.0.5", 40013, "10.0.0.6", 3868, "10.9.0.17",
                                        3868)),
    "unknown-option": sync_msg(0, sync_v4(6, 0x83, 1, "10.9.0.5", 40004, "10.0.0.1", 80, "10.9.0.11", 80,
                                          opts=bytes([9, 2, 0, 0]))),
}
for target, files in seeds.items():
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        if data:
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
