#!/usr/bin/env python3
"""A minimal SCTP endpoint on raw sockets, for the end-to-end tests on a kernel without SCTP.

Enough of RFC 9260 for one association at a time per client port: the four-way handshake
(INIT, INIT ACK with a state cookie, COOKIE ECHO, COOKIE ACK), DATA acknowledged by SACK in
lock step, and the graceful close (SHUTDOWN, SHUTDOWN ACK, SHUTDOWN COMPLETE). Every packet
received is checked against its CRC32c; one that fails is counted and ignored.

  sctp_peer.py server NAME PORT
      Answers associations to PORT on every local address, IPv4 and IPv6; each DATA chunk is
      echoed back as "NAME:" + its payload, bundled behind the SACK. Runs until killed.
  sctp_peer.py client VIP PORT --sport N [--msgs K] [--size S] [--timeout T]
      Opens an association from port N, sends K messages of S bytes, checks each echo, closes,
      and prints one JSON line: {"server", "echoed", "bad_crc", "retransmits", "closed"}.
      Exit status 0 when every message came back intact and the close completed.
"""
import json
import os
import select
import socket
import struct
import sys
import time

IPPROTO_SCTP = 132
DATA, INIT, INIT_ACK, SACK, ABORT, SHUTDOWN, SHUTDOWN_ACK = 0, 1, 2, 3, 6, 7, 8
COOKIE_ECHO, COOKIE_ACK, SHUTDOWN_COMPLETE = 10, 11, 14


def _table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


CRC_TABLE = _table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def packet(sport, dport, vtag, chunks):
    body = b"".join(chunks)
    hdr = struct.pack("!HHII", sport, dport, vtag, 0)
    crc = crc32c(hdr + body)
    return hdr[:8] + struct.pack("<I", crc) + body


def chunk(ctype, flags, value=b""):
    c = struct.pack("!BBH", ctype, flags, 4 + len(value)) + value
    return c + b"\0" * (-len(c) % 4)


def parse(seg):
    """(sport, dport, vtag, [(type, flags, value)]) or None when the CRC32c fails."""
    if len(seg) < 12:
        return None
    sport, dport, vtag = struct.unpack("!HHI", seg[:8])
    (crc,) = struct.unpack("<I", seg[8:12])
    if crc32c(seg[:8] + b"\0\0\0\0" + seg[12:]) != crc:
        return None
    chunks, at = [], 12
    while at + 4 <= len(seg):
        ctype, flags, clen = struct.unpack("!BBH", seg[at:at + 4])
        if clen < 4:
            break
        chunks.append((ctype, flags, seg[at + 4:at + clen]))
        at += (clen + 3) & ~3
    return sport, dport, vtag, chunks


def init_value(tag, tsn, cookie=None):
    v = struct.pack("!IIHHI", tag, 65536, 1, 1, tsn)
    if cookie is not None:
        p = struct.pack("!HH", 7, 4 + len(cookie)) + cookie
        v += p + b"\0" * (-len(p) % 4)
    return v


class Raw:
    """Raw SCTP sockets of both families: receive (source, destination, segment), send from a
    given local address."""

    def __init__(self):
        self.v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_SCTP)
        self.v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, IPPROTO_SCTP)
        self.v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        self.out = {}
        self.bad_crc = 0

    def recv(self, timeout):
        """The next SCTP packet with a good CRC32c, or None after `timeout` seconds."""
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                return None
            r, _, _ = select.select([self.v4, self.v6], [], [], left)
            for s in r:
                if s is self.v4:
                    d = s.recv(65535)
                    ihl = (d[0] & 15) * 4
                    src, dst, seg = socket.inet_ntoa(d[12:16]), socket.inet_ntoa(d[16:20]), d[ihl:]
                else:
                    seg, anc, _, addr = s.recvmsg(65535, 256)
                    src, dst = addr[0], None
                    for level, kind, data in anc:
                        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                            dst = socket.inet_ntop(socket.AF_INET6, data[:16])
                p = parse(seg)
                if p is None:
                    self.bad_crc += 1
                    continue
                return src, dst, p

    def send(self, src, dst, data):
        fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
        key = (fam, src)
        if key not in self.out:
            s = socket.socket(fam, socket.SOCK_RAW, IPPROTO_SCTP)
            if src:
                s.bind((src, 0))
            self.out[key] = s
        self.out[key].sendto(data, (dst, 0))


def server(name, port):
    raw = Raw()
    assocs = {}
    prefix = name.encode() + b":"
    while True:
        got = raw.recv(3600)
        if got is None:
            continue
        src, dst, (sport, dport, vtag, chunks) = got
        if dport != port or not chunks:
            continue
        key = (src, sport, dst)
        a = assocs.get(key)
        out = []
        for ctype, _, value in chunks:
            if ctype == INIT and len(value) >= 16:
                peer_tag, _, _, _, peer_tsn = struct.unpack("!IIHHI", value[:16])
                if a is None or a["peer_tag"] != peer_tag:
                    a = assocs[key] = {"tag": struct.unpack("!I", os.urandom(4))[0] | 1,
                                       "peer_tag": peer_tag, "tsn": 1000, "peer_cum": peer_tsn - 1}
                out.append(chunk(INIT_ACK, 0, init_value(a["tag"], a["tsn"], b"cookie-" + name.encode())))
                raw.send(dst, src, packet(port, sport, peer_tag, out))
                out = []
            elif a is None or vtag != a["tag"]:
                continue
            elif ctype == COOKIE_ECHO:
                out.append(chunk(COOKIE_ACK, 0))
            elif ctype == DATA and len(value) >= 12:
                (tsn,) = struct.unpack("!I", value[:4])
                payload = value[12:]
                fresh = tsn == (a["peer_cum"] + 1) & 0xFFFFFFFF
                if fresh:
                    a["peer_cum"] = tsn
                out.append(chunk(SACK, 0, struct.pack("!IIHH", a["peer_cum"], 65536, 0, 0)))
                if fresh:
                    a["last"] = chunk(DATA, 3, struct.pack("!IHHI", a["tsn"], 0, 0, 0) + prefix + payload)
                    a["tsn"] += 1
                if "last" in a:
                    out.append(a["last"])
            elif ctype == SHUTDOWN:
                out.append(chunk(SHUTDOWN_ACK, 0))
            elif ctype in (SHUTDOWN_COMPLETE, ABORT):
                assocs.pop(key, None)
        if out and a is not None:
            raw.send(dst, src, packet(port, sport, a["peer_tag"], out))


def client(vip, port, sport, msgs, size, timeout):
    raw = Raw()
    tag = struct.unpack("!I", os.urandom(4))[0] | 1
    result = {"server": None, "echoed": 0, "bad_crc": 0, "retransmits": 0, "closed": False}
    deadline = time.time() + timeout

    def exchange(vtag, chunks, want):
        """Send `chunks` until a packet of the association with a chunk of type `want` comes
        back; that packet's chunks."""
        while time.time() < deadline:
            raw.send(None, vip, packet(sport, port, vtag, chunks))
            end = time.time() + 1.0
            while time.time() < end:
                got = raw.recv(end - time.time())
                if got is None:
                    break
                src, _, (ps, pd, ptag, pchunks) = got
                if src != vip or ps != port or pd != sport or ptag != tag:
                    continue
                if any(c[0] == want for c in pchunks):
                    return pchunks
            result["retransmits"] += 1
        return None

    def done():
        result["bad_crc"] = raw.bad_crc
        print(json.dumps(result), flush=True)
        ok = result["echoed"] == msgs and result["closed"] and raw.bad_crc == 0
        return 0 if ok else 1

    got = exchange(0, [chunk(INIT, 0, init_value(tag, 1))], INIT_ACK)
    if got is None:
        return done()
    value = next(c[2] for c in got if c[0] == INIT_ACK)
    peer_tag, _, _, _, peer_tsn = struct.unpack("!IIHHI", value[:16])
    ptype, plen = struct.unpack("!HH", value[16:20])
    cookie = value[20:16 + plen]
    if exchange(peer_tag, [chunk(COOKIE_ECHO, 0, cookie)], COOKIE_ACK) is None:
        return done()
    result["server"] = cookie.decode(errors="replace").removeprefix("cookie-")
    cum = peer_tsn - 1
    for i in range(msgs):
        payload = (b"%06d" % i) * (size // 6 + 1)
        payload = payload[:size]
        data = chunk(DATA, 3, struct.pack("!IHHI", 1 + i, 0, i & 0xFFFF, 0) + payload)
        for _ in range(10):  # (an echo of an earlier message, late, is skipped)
            got = exchange(peer_tag, [data], DATA)
            if got is None:
                return done()
            echo = [c[2] for c in got if c[0] == DATA]
            (tsn,) = struct.unpack("!I", echo[0][:4])
            if tsn == cum + 1:
                break
        else:
            return done()
        cum = tsn
        raw.send(None, vip, packet(sport, port, peer_tag, [chunk(SACK, 0, struct.pack("!IIHH", cum, 65536, 0, 0))]))
        if echo[0][12:] == result["server"].encode() + b":" + payload:
            result["echoed"] += 1
    if exchange(peer_tag, [chunk(SHUTDOWN, 0, struct.pack("!I", cum))], SHUTDOWN_ACK) is not None:
        raw.send(None, vip, packet(sport, port, peer_tag, [chunk(SHUTDOWN_COMPLETE, 0)]))
        result["closed"] = True
    return done()


def main():
    a = sys.argv[1:]
    if a[:1] == ["server"] and len(a) == 3:
        server(a[1], int(a[2]))
        return 0
    if a[:1] == ["client"] and len(a) >= 3:
        opts = dict(zip(a[3::2], a[4::2]))
        return client(a[1], int(a[2]), int(opts["--sport"]), int(opts.get("--msgs", 20)),
                      int(opts.get("--size", 1000)), float(opts.get("--timeout", 30)))
    print(__doc__, file=sys.stderr)
    return 2


sys.exit(main())
