//! Frames, header parsing (etherparse) and the in-place rewrites: MAC and TTL, NAT with
//! incremental checksums (RFC 1624), tunnel encapsulation into the headroom, and ICMP errors
//! built in place. No allocation, no copy of the payload.

use std::net::IpAddr;

use etherparse::{
    Ethernet2HeaderSlice, Ipv4HeaderSlice, Ipv6HeaderSlice, TcpHeaderSlice, UdpHeaderSlice,
};

use crate::proto::{chunk, SctpChunks, SctpEvent, TcpFlags};
use crate::types::{TunnelConfig, TunnelCsum, TunnelType};

pub mod header;
use header::{
    eth, icmp, ipv4, ipv6, sctp, tcp, udp, GreRepr, GueRepr, IcmpRepr, Ipv4Repr, Ipv6Repr,
};
use header::{Ipv4View, Ipv6View};

/// Ethernet header length.
pub const ETH_LEN: usize = eth::LEN;
const ETH_P_IPV4: u16 = eth::P_IPV4;
const ETH_P_IPV6: u16 = eth::P_IPV6;
/// The IPv4 header of a frame.
const IP4: usize = ETH_LEN;
/// The IPv6 header of a frame.
const IP6: usize = ETH_LEN;
/// IP protocol numbers.
pub const IPPROTO_ICMP: u8 = 1;
/// IPv4-in-IP.
pub const IPPROTO_IPIP: u8 = 4;
/// TCP.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv6-in-IP.
pub const IPPROTO_IPV6: u8 = 41;
/// GRE.
pub const IPPROTO_GRE: u8 = 47;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IP protocol number of SCTP.
pub const IPPROTO_SCTP: u8 = 132;

/// A frame in a buffer the caller owns: `buf[start..start + len]` is the Ethernet frame;
/// encapsulation grows it into the room behind it or, when there is none, into the headroom
/// `buf[..start]`.
#[derive(Debug)]
pub struct Frame<'a> {
    buf: &'a mut [u8],
    start: usize,
    len: usize,
    mark: u32,
    ifindex: u32,
}

impl<'a> Frame<'a> {
    /// A frame of `len` bytes at `start` in `buf`. Out-of-range values are clamped.
    pub fn new(buf: &'a mut [u8], start: usize, len: usize) -> Frame<'a> {
        let start = start.min(buf.len());
        let len = len.min(buf.len() - start);
        Frame {
            buf,
            start,
            len,
            mark: 0,
            ifindex: 0,
        }
    }

    /// The same frame as received on interface `ifindex` (for the mark rules' `-i`).
    pub fn with_ifindex(mut self, ifindex: u32) -> Frame<'a> {
        self.ifindex = ifindex;
        self
    }

    /// The interface the frame was received on (0 = unknown).
    #[inline]
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The same frame carrying a firewall mark (for fwmark services); 0 = none.
    pub fn with_mark(mut self, mark: u32) -> Frame<'a> {
        self.mark = mark;
        self
    }

    /// The frame's firewall mark (0 = none).
    #[inline]
    pub fn mark(&self) -> u32 {
        self.mark
    }

    /// The frame's bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// The frame's bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }

    /// The whole buffer, headroom included (the frame is at `start()..start() + len()`).
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        self.buf
    }

    /// Offset of the frame in the buffer (after a push, smaller than at the start).
    pub fn start(&self) -> usize {
        self.start
    }

    /// Frame length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Grow the frame at the front by `n` bytes: its old bytes then begin at offset `n` of
    /// [`Frame::data`]. False if the buffer has no room for them.
    ///
    /// When the buffer has room behind the frame, the frame keeps its start and its bytes move
    /// back by `n`: the copy stays within the lines the packet's processing has just read,
    /// where new headers written into the headroom would go to a line nothing has touched
    /// since the buffer's last use, and the I/O layer, which
    /// transmits from the frame's original start, would have to move the whole frame back
    /// anyway. Only a buffer full behind the frame grows into the headroom.
    fn push(&mut self, n: usize) -> bool {
        let end = self.start + self.len;
        if self.buf.len() - end >= n {
            self.buf.copy_within(self.start..end, self.start + n);
        } else if self.start >= n {
            self.start -= n;
        } else {
            return false;
        }
        self.len += n;
        true
    }

    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

/// Addresses of the next hop and the egress, resolved by the caller (netlink, static table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    /// Egress interface index.
    pub ifindex: u32,
    /// MAC of the egress interface.
    pub src_mac: [u8; 6],
    /// MAC of the next hop.
    pub dst_mac: [u8; 6],
    /// MTU of the route.
    pub mtu: u16,
    /// The box's own address of the destination's family, used as tunnel source.
    pub src_ip: Option<IpAddr>,
}

/// Why a frame could not be parsed as a packet xvs handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not IPv4 or IPv6 (ARP, VLAN, ...): the kernel's business.
    NotIp,
    /// Truncated or inconsistent headers.
    Malformed,
    /// An IPv4 fragment or an IPv6 packet with a fragment header.
    Fragment,
    /// IPv6 extension headers other than fragments.
    Ipv6Extension,
}

/// The header fields the data path needs, with offsets into the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// IPv6?
    pub v6: bool,
    /// Offset of the L4 header.
    pub l4: usize,
    /// IP protocol of the L4 header.
    pub proto: u8,
    /// Source address.
    pub saddr: IpAddr,
    /// Destination address.
    pub daddr: IpAddr,
    /// Source port (TCP/UDP; ICMP: 0).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// TCP flags.
    pub tcp: TcpFlags,
    /// SCTP: the chunks that drive the state machine (None without a whole chunk header).
    pub sctp: Option<SctpChunks>,
    /// TTL / hop limit.
    pub ttl: u8,
    /// IP length (header + payload), the byte count for statistics.
    pub ip_len: usize,
    /// IPv4 DF (always true for IPv6: routers never fragment).
    pub df: bool,
    /// ICMP type and code when proto is ICMP/ICMPv6.
    pub icmp: Option<(u8, u8)>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Parse an Ethernet frame.
///
/// IPv4 TCP and UDP, nearly all of a balancer's traffic, are read at their fixed offsets
/// ([`parse_ipv4_fast`]); every other frame, and an IPv4 frame the fast reader does not take as
/// it is, goes through etherparse's header slices ([`parse_general`]). Both give the same
/// answer for every frame (a property test holds them to it).
#[inline]
pub fn parse(frame: &[u8]) -> Result<Packet, ParseError> {
    match parse_ipv4_fast(frame) {
        Some(p) => Ok(p),
        None => parse_general(frame),
    }
}

/// [`parse`] into `out`, field by field in place (store forwarding: see the data path's
/// module documentation).
#[inline(always)]
pub fn parse_into(frame: &[u8], out: &mut Result<Packet, ParseError>) {
    match parse_ipv4_fast(frame) {
        Some(p) => *out = Ok(p),
        None => *out = parse_general(frame),
    }
}

/// An IPv4 TCP or UDP packet whose headers are whole and consistent, read straight from the
/// frame; None for anything else (including every malformed frame, so that the error comes
/// from [`parse_general`]).
#[inline(always)]
pub fn parse_ipv4_fast(frame: &[u8]) -> Option<Packet> {
    // Ethernet + IPv4 (no options here) + the first 16 bytes of TCP or UDP.
    const SEEN: usize = ETH_LEN + ipv4::MIN_LEN + 16;
    let h: &[u8; SEEN] = frame.get(..SEEN)?.try_into().ok()?;
    if h[eth::TYPE] != ETH_P_IPV4.to_be_bytes() || h[IP4 + ipv4::VER_IHL] != ipv4::VER_IHL_PLAIN {
        return None;
    }
    let ip = Ipv4View(&h[IP4..]);
    let total = usize::from(ip.total_len());
    let frag = be16(h, IP4 + ipv4::FLG_OFF.start);
    let proto = ip.protocol();
    let l4 = IP4 + ipv4::MIN_LEN;
    let seg_len = total.checked_sub(ipv4::MIN_LEN)?;
    if ETH_LEN + total > frame.len() || frag & ipv4::MF_OFFSET != 0 {
        return None;
    }
    let mut flags = TcpFlags::default();
    match proto {
        IPPROTO_TCP => {
            let doff = usize::from(h[l4 + tcp::DATA_OFF] >> 4) * 4;
            if doff < tcp::MIN_LEN || seg_len < doff {
                return None;
            }
            flags = TcpFlags::from_header_byte(h[l4 + tcp::FLAGS]);
        }
        IPPROTO_UDP => {
            let ulen = usize::from(be16(h, l4 + udp::LENGTH.start));
            if ulen < udp::LEN || ulen > seg_len {
                return None;
            }
        }
        _ => return None,
    }
    // TCP and UDP have their ports at the same place.
    Some(Packet {
        v6: false,
        l4,
        proto,
        saddr: IpAddr::V4(ip.src()),
        daddr: IpAddr::V4(ip.dst()),
        sport: be16(h, l4 + tcp::SRC_PORT.start),
        dport: be16(h, l4 + tcp::DST_PORT.start),
        tcp: flags,
        sctp: None,
        ttl: ip.ttl(),
        ip_len: total,
        df: frag & ipv4::DF != 0,
        icmp: None,
    })
}

/// Parse an Ethernet frame with etherparse's header slices (every frame [`parse`] does not
/// read at fixed offsets).
pub fn parse_general(frame: &[u8]) -> Result<Packet, ParseError> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| ParseError::NotIp)?;
    let l3 = ETH_LEN;
    match eth.ether_type().0 {
        ETH_P_IPV4 => {
            let ip =
                Ipv4HeaderSlice::from_slice(&frame[l3..]).map_err(|_| ParseError::Malformed)?;
            let hlen = usize::from(ip.ihl()) * 4;
            let total = usize::from(ip.total_len());
            if total < hlen || l3 + total > frame.len() {
                return Err(ParseError::Malformed);
            }
            if ip.more_fragments() || ip.fragments_offset().value() != 0 {
                return Err(ParseError::Fragment);
            }
            let ip_end = l3 + total;
            finish(
                frame,
                ip_end,
                l3 + hlen,
                ip.protocol().0,
                IpAddr::V4(ip.source_addr()),
                IpAddr::V4(ip.destination_addr()),
                ip.ttl(),
                total,
                ip.dont_fragment(),
                false,
            )
        }
        ETH_P_IPV6 => {
            let ip =
                Ipv6HeaderSlice::from_slice(&frame[l3..]).map_err(|_| ParseError::Malformed)?;
            let total = ipv6::LEN + usize::from(ip.payload_length());
            if l3 + total > frame.len() {
                return Err(ParseError::Malformed);
            }
            let nh = ip.next_header();
            {
                use etherparse::ip_number::*;
                match nh {
                    IPV6_FRAG => return Err(ParseError::Fragment),
                    IPV6_HOP_BY_HOP | IPV6_ROUTE | IPV6_DEST_OPTIONS | AUTH | MOBILITY | HIP
                    | SHIM6 => return Err(ParseError::Ipv6Extension),
                    _ => {}
                }
            }
            let nh = nh.0;
            finish(
                frame,
                l3 + total,
                l3 + ipv6::LEN,
                nh,
                IpAddr::V6(ip.source_addr()),
                IpAddr::V6(ip.destination_addr()),
                ip.hop_limit(),
                total,
                true,
                true,
            )
        }
        _ => Err(ParseError::NotIp),
    }
}

#[allow(clippy::too_many_arguments)]
fn finish(
    frame: &[u8],
    ip_end: usize,
    l4: usize,
    proto: u8,
    saddr: IpAddr,
    daddr: IpAddr,
    ttl: u8,
    ip_len: usize,
    df: bool,
    v6: bool,
) -> Result<Packet, ParseError> {
    let seg = &frame[l4..ip_end];
    let mut p = Packet {
        v6,
        l4,
        proto,
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        tcp: TcpFlags::default(),
        sctp: None,
        ttl,
        ip_len,
        df,
        icmp: None,
    };
    match proto {
        IPPROTO_TCP => {
            let t = TcpHeaderSlice::from_slice(seg).map_err(|_| ParseError::Malformed)?;
            p.sport = t.source_port();
            p.dport = t.destination_port();
            p.tcp = TcpFlags::new(t.syn(), t.fin(), t.ack(), t.rst());
        }
        IPPROTO_UDP => {
            let u = UdpHeaderSlice::from_slice(seg).map_err(|_| ParseError::Malformed)?;
            if usize::from(u.length()) < 8 || usize::from(u.length()) > seg.len() {
                return Err(ParseError::Malformed);
            }
            p.sport = u.source_port();
            p.dport = u.destination_port();
        }
        IPPROTO_SCTP => {
            if seg.len() < sctp::LEN {
                return Err(ParseError::Malformed);
            }
            p.sport = be16(seg, sctp::SRC_PORT.start);
            p.dport = be16(seg, sctp::DST_PORT.start);
            p.sctp = sctp_chunks(seg);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if seg.len() < icmp::LEN {
                return Err(ParseError::Malformed);
            }
            p.icmp = Some((seg[icmp::TYPE], seg[icmp::CODE]));
        }
        _ => {}
    }
    Ok(p)
}

/// The first chunk's type and the packet's event (`set_sctp_state`): an ABORT right after a
/// COOKIE ECHO or COOKIE ACK makes the event ABORT. None when no chunk header is whole.
fn sctp_chunks(seg: &[u8]) -> Option<SctpChunks> {
    let first = *seg.get(sctp::LEN)?;
    seg.get(sctp::LEN..sctp::LEN + sctp::CHUNK_LEN)?;
    let mut event = SctpEvent::of_chunk(first);
    if matches!(first, chunk::COOKIE_ECHO | chunk::COOKIE_ACK) {
        let clen = usize::from(be16(seg, sctp::LEN + 2));
        if clen >= sctp::CHUNK_LEN {
            let next = sctp::LEN + clen.div_ceil(4) * 4;
            if seg.get(next..next + sctp::CHUNK_LEN).map(|c| c[0]) == Some(chunk::ABORT) {
                event = SctpEvent::Abort;
            }
        }
    }
    Some(SctpChunks { first, event })
}

/// The CRC32c of an SCTP packet (RFC 9260, appendix A), computed with its checksum field as
/// zero; stored in the field as little-endian bytes, as the kernel's `sctp_compute_cksum`.
pub fn sctp_checksum(seg: &[u8]) -> [u8; 4] {
    let at = sctp::CHECKSUM;
    let crc = crc32c::crc32c(&seg[..at.start]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &seg[at.end..]).to_le_bytes()
}

/// Recompute an SCTP packet's checksum in place.
pub fn fill_sctp_checksum(seg: &mut [u8]) {
    let c = sctp_checksum(seg);
    seg[sctp::CHECKSUM].copy_from_slice(&c);
}

/// The packet an ICMP error quotes: its addresses and ports, and where they sit in the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quoted {
    /// Offset of the quoted IP header in the frame.
    pub ip: usize,
    /// Offset of the quoted L4 header.
    pub l4: usize,
    /// Quoted protocol.
    pub proto: u8,
    /// Quoted source.
    pub saddr: IpAddr,
    /// Quoted destination.
    pub daddr: IpAddr,
    /// Quoted ports (first 4 bytes of the L4 header).
    pub sport: u16,
    /// Quoted destination port.
    pub dport: u16,
}

/// Whether an ICMP message is an error that refers to a connection (IPv4: unreachable, source
/// quench, time exceeded; IPv6: every error type).
pub fn is_icmp_error(p: &Packet) -> bool {
    match p.icmp {
        Some((t, _)) if p.v6 => t < icmp::V6_INFO_FIRST,
        Some((t, _)) => matches!(
            t,
            icmp::DEST_UNREACH | icmp::SOURCE_QUENCH | icmp::TIME_EXCEEDED
        ),
        None => false,
    }
}

/// Parse the packet quoted by an ICMP error.
pub fn parse_quoted(frame: &[u8], p: &Packet) -> Option<Quoted> {
    let ip = p.l4 + icmp::LEN;
    let end = ETH_LEN + p.ip_len;
    let q = frame.get(ip..end)?;
    let (hlen, proto, saddr, daddr) = if p.v6 {
        let v = Ipv6View(q);
        if q.len() < ipv6::LEN || v.version() != 6 {
            return None;
        }
        let (s, d) = (v.src(), v.dst());
        (ipv6::LEN, v.next_header(), IpAddr::V6(s), IpAddr::V6(d))
    } else {
        let v = Ipv4View(q);
        if q.len() < ipv4::MIN_LEN || v.version() != 4 || v.header_len() < ipv4::MIN_LEN {
            return None;
        }
        let (s, d) = (v.src(), v.dst());
        (v.header_len(), v.protocol(), IpAddr::V4(s), IpAddr::V4(d))
    };
    // The first 4 bytes of the quoted L4 header: the ports of TCP and UDP.
    let ports = q.get(hlen..hlen + 4)?;
    Some(Quoted {
        ip,
        l4: ip + hlen,
        proto,
        saddr,
        daddr,
        sport: be16(ports, tcp::SRC_PORT.start),
        dport: be16(ports, tcp::DST_PORT.start),
    })
}

// ---- checksums -------------------------------------------------------------------------------

/// One's-complement sum of 16-bit big-endian words (odd trailing byte padded with zero).
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
    }
    if let [b] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*b) << 8);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Internet checksum of `data` (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum16(data, 0))
}

/// Write `new` over the `N` bytes at `at` (`N` even) and return what the change adds to a
/// checksum by RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'): the sum of ~m + m' over its 16-bit
/// words (at most 16 words of 0x1FFFE: no overflow). The fixed size lets the compiler unroll
/// it and copy without a call.
#[inline(always)]
fn replace_words<const N: usize>(frame: &mut [u8], at: usize, new: [u8; N]) -> u32 {
    let field = &mut frame[at..at + N];
    let mut acc = 0u32;
    for (o, n) in field.chunks_exact(2).zip(new.chunks_exact(2)) {
        acc += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        acc += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    field.copy_from_slice(&new);
    acc
}

/// The ones' complement sum of `!old + new` over the big-endian words of two addresses of one
/// family: what replacing `old` by `new` adds to a checksum that covers it (unfolded).
pub fn words_delta(old: &IpAddr, new: &IpAddr) -> u32 {
    let (o, n) = (addr_bytes(old), addr_bytes(new));
    let len = o.1.min(n.1);
    o.0[..len]
        .chunks_exact(2)
        .zip(n.0[..len].chunks_exact(2))
        .map(|(a, b)| {
            u32::from(!u16::from_be_bytes([a[0], a[1]]))
                + u32::from(u16::from_be_bytes([b[0], b[1]]))
        })
        .sum()
}

/// A ones' complement sum folded into 16 bits.
pub fn fold16(acc: u32) -> u16 {
    fold(acc)
}

/// A checksum `hc` updated by a change whose [`replace_words`] sum is `delta`.
fn csum_update(hc: u16, delta: u32) -> u16 {
    !fold(u32::from(!hc) + delta)
}

fn addr_bytes(a: &IpAddr) -> ([u8; 16], usize) {
    let mut b = [0u8; 16];
    match a {
        IpAddr::V4(v) => {
            b[..4].copy_from_slice(&v.octets());
            (b, 4)
        }
        IpAddr::V6(v) => (v.octets(), 16),
    }
}

/// Full L4 checksum with the pseudo-header (TCP, UDP, ICMPv6).
pub fn l4_checksum(saddr: &IpAddr, daddr: &IpAddr, proto: u8, seg: &[u8]) -> u16 {
    let (s, sl) = addr_bytes(saddr);
    let (d, dl) = addr_bytes(daddr);
    let mut acc = sum16(&s[..sl], 0);
    acc = sum16(&d[..dl], acc);
    acc = acc.wrapping_add(u32::from(proto));
    acc = acc.wrapping_add(seg.len() as u32);
    !fold(sum16(seg, acc))
}

/// Offset of the L4 checksum field for TCP/UDP, relative to the L4 header.
fn l4_csum_off(proto: u8) -> Option<usize> {
    match proto {
        IPPROTO_TCP => Some(tcp::CHECKSUM.start),
        IPPROTO_UDP => Some(udp::CHECKSUM.start),
        _ => None,
    }
}

// ---- rewrites --------------------------------------------------------------------------------

/// Set the Ethernet addresses for the next hop.
#[inline(always)] // Once per forwarded packet; one bounds check for both addresses.
pub fn set_macs(frame: &mut [u8], hop: &NextHop) {
    let macs: &mut [u8; 12] = (&mut frame[eth::ADDRS]).try_into().expect("12 bytes");
    macs[eth::DST].copy_from_slice(&hop.dst_mac);
    macs[eth::SRC].copy_from_slice(&hop.src_mac);
}

/// Decrement TTL / hop limit (the caller checked it is > 1).
#[inline(always)] // Once per forwarded packet: a call would cost more than the body.
pub fn dec_ttl(frame: &mut [u8], p: &Packet) {
    if p.v6 {
        let hl = &mut frame[IP6 + ipv6::HOP_LIMIT];
        *hl = hl.saturating_sub(1);
    } else {
        // One bounds check for the TTL and the checksum.
        let ip: &mut [u8; ipv4::CHECKSUM.end] = (&mut frame[IP4..IP4 + ipv4::CHECKSUM.end])
            .try_into()
            .expect("12 bytes");
        // TTL is the high byte of a 16-bit word: it drops by 0x0100, so by RFC 1624 the
        // checksum rises by 0x0100 (one's complement, end-around carry), as the kernel's
        // ip_decrease_ttl does. A one's-complement sum does not depend on byte order (RFC
        // 1071), so the checksum's two bytes are added to as a little-endian word, where that
        // 0x0100 is 0x0001: no byte swaps.
        ip[ipv4::TTL] = ip[ipv4::TTL].saturating_sub(1);
        let c = &mut ip[ipv4::CHECKSUM];
        let sum = u32::from(u16::from_le_bytes([c[0], c[1]])) + 0x0001;
        let c2 = (sum + (sum >> 16)) as u16;
        c.copy_from_slice(&c2.to_le_bytes());
    }
}

/// Which side of the packet a NAT rewrite changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatSide {
    /// Destination address and port (client → real server).
    Dst,
    /// Source address and port (real server → client).
    Src,
}

/// Rewrite one address and port, patching the IP and L4 checksums incrementally. A UDP
/// checksum of 0 (none, IPv4) stays 0; a computed 0 becomes 0xFFFF.
pub fn nat_rewrite(frame: &mut [u8], p: &Packet, side: NatSide, addr: IpAddr, port: u16) {
    // TCP and UDP have their ports at the same place.
    let (aoff, poff) = match (p.v6, side) {
        (false, NatSide::Src) => (IP4 + ipv4::SRC.start, tcp::SRC_PORT.start),
        (false, NatSide::Dst) => (IP4 + ipv4::DST.start, tcp::DST_PORT.start),
        (true, NatSide::Src) => (IP6 + ipv6::SRC.start, tcp::SRC_PORT.start),
        (true, NatSide::Dst) => (IP6 + ipv6::DST.start, tcp::DST_PORT.start),
    };
    // The address's change enters the IPv4 header's checksum and, through the pseudo-header,
    // the L4 one; the port's only the L4 one.
    let addr_delta = match addr {
        IpAddr::V4(a) => replace_words(frame, aoff, a.octets()),
        IpAddr::V6(a) => replace_words(frame, aoff, a.octets()),
    };
    let mut l4_delta = addr_delta;
    if matches!(p.proto, IPPROTO_TCP | IPPROTO_UDP) {
        l4_delta += replace_words(frame, p.l4 + poff, port.to_be_bytes());
    } else if p.proto == IPPROTO_SCTP && be16(frame, p.l4 + poff) != port {
        // The CRC32c covers no address: recomputed only when the port changes
        // (`sctp_dnat_handler`, `sctp_snat_handler`).
        put16(frame, p.l4 + poff, port);
        fill_sctp_checksum(&mut frame[p.l4..ETH_LEN + p.ip_len]);
    }
    if let Some(co) = l4_csum_off(p.proto) {
        let at = p.l4 + co;
        let hc = be16(frame, at);
        if !(p.proto == IPPROTO_UDP && hc == 0 && !p.v6) {
            let mut c = csum_update(hc, l4_delta);
            if p.proto == IPPROTO_UDP && c == 0 {
                c = 0xffff;
            }
            put16(frame, at, c);
        }
    }
    if !p.v6 {
        let at = IP4 + ipv4::CHECKSUM.start;
        let c = csum_update(be16(frame, at), addr_delta);
        put16(frame, at, c);
    }
}

/// Rewrite the packet quoted by an ICMP error and the outer address for NAT (`ip_vs_nat_icmp`):
/// `side` says which quoted address/port change; the outer address on the opposite side takes
/// the same new address. The quoted L4 checksum is left as the kernel leaves it; the quoted
/// and outer IP checksums and the ICMP checksum are recomputed.
pub fn nat_icmp(frame: &mut [u8], p: &Packet, q: &Quoted, side: NatSide, addr: IpAddr, port: u16) {
    let (new, n) = addr_bytes(&addr);
    let new = &new[..n];
    // Outer: an error about a packet *from* the VIP goes *to* the real server and vice versa.
    let (src, dst) = if p.v6 {
        (ipv6::SRC.start, ipv6::DST.start)
    } else {
        (ipv4::SRC.start, ipv4::DST.start)
    };
    let (outer, inner, port_at) = match side {
        NatSide::Src => (ETH_LEN + dst, q.ip + src, tcp::SRC_PORT),
        NatSide::Dst => (ETH_LEN + src, q.ip + dst, tcp::DST_PORT),
    };
    frame[outer..outer + n].copy_from_slice(new);
    frame[inner..inner + n].copy_from_slice(new);
    if matches!(q.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) && frame.len() >= q.l4 + 4 {
        frame[q.l4 + port_at.start..q.l4 + port_at.end].copy_from_slice(&port.to_be_bytes());
    }
    if !p.v6 {
        Ipv4View(&mut frame[q.ip..]).fill_checksum();
        Ipv4View(&mut frame[IP4..]).fill_checksum();
    }
    finish_icmp_checksum(frame, p);
}

fn finish_icmp_checksum(frame: &mut [u8], p: &Packet) {
    let end = ETH_LEN + p.ip_len;
    let at = p.l4 + icmp::CHECKSUM.start;
    put16(frame, at, 0);
    let c = if p.v6 {
        let ip = Ipv6View(&frame[IP6..]);
        let (s, d) = (IpAddr::V6(ip.src()), IpAddr::V6(ip.dst()));
        l4_checksum(&s, &d, IPPROTO_ICMPV6, &frame[p.l4..end])
    } else {
        checksum(&frame[p.l4..end])
    };
    put16(frame, at, c);
}

/// Bytes an encapsulation adds in front of the inner IP packet.
pub fn tunnel_overhead(outer_v6: bool, t: &TunnelConfig) -> usize {
    ip_header_len(outer_v6)
        + match t.kind {
            TunnelType::Ipip => 0,
            TunnelType::Gue => GueRepr::LEN,
            TunnelType::Gre => gre_of(t, false).header_len(),
        }
}

/// The length of the IP header xvs writes.
fn ip_header_len(v6: bool) -> usize {
    if v6 {
        ipv6::LEN
    } else {
        ipv4::MIN_LEN
    }
}

fn ethertype(v6: bool) -> u16 {
    if v6 {
        ETH_P_IPV6
    } else {
        ETH_P_IPV4
    }
}

fn gre_of(t: &TunnelConfig, inner_v6: bool) -> GreRepr {
    GreRepr {
        csum: t.csum == TunnelCsum::Csum,
        proto: ethertype(inner_v6),
    }
}

/// The tunnel header a connection's packets get between the outer IP header and the inner
/// packet, as [`encapsulate`] writes it, for a fast path that copies it: its bytes (a GUE
/// header's UDP length counts only its own 12 bytes, the inner packet's length is added per
/// packet), its length (0, 4 or 12) and the outer protocol. None when the header needs a
/// checksum over the payload (GUE with `--tun-csum`/`--tun-remcsum` or IPv6 outside, GRE with
/// its checksum).
pub fn tunnel_header(t: &TunnelConfig, p: &Packet, outer_v6: bool) -> Option<TunnelHeader> {
    let mut bytes = [0u8; 12];
    let inner_proto = if p.v6 { IPPROTO_IPV6 } else { IPPROTO_IPIP };
    let (len, proto) = match t.kind {
        TunnelType::Ipip => (0, inner_proto),
        TunnelType::Gue => {
            if t.csum != TunnelCsum::NoCsum || outer_v6 {
                return None;
            }
            let g = GueRepr {
                sport: flow_port(p),
                dport: t.port,
                inner_proto,
                inner_len: 0,
            };
            g.emit(&mut bytes);
            (GueRepr::LEN, IPPROTO_UDP)
        }
        TunnelType::Gre => {
            let g = gre_of(t, p.v6);
            if g.csum {
                return None;
            }
            g.emit(&mut bytes);
            (g.header_len(), IPPROTO_GRE)
        }
    };
    Some(TunnelHeader {
        bytes,
        len: len as u8,
        proto,
    })
}

/// See [`tunnel_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelHeader {
    /// The header (the first `len` bytes).
    pub bytes: [u8; 12],
    /// Its length.
    pub len: u8,
    /// The outer IP header's protocol.
    pub proto: u8,
}

/// A small flow hash for the GUE source port (so the receiver can spread flows).
fn flow_port(p: &Packet) -> u16 {
    let h = crate::hash::fold_addr(&p.saddr)
        ^ crate::hash::fold_addr(&p.daddr).rotate_left(7)
        ^ (u32::from(p.sport) << 16 | u32::from(p.dport))
        ^ u32::from(p.proto);
    let h = crate::hash::hash_32(h, 16) as u16;
    // Ephemeral range 49152..65535 as Linux does for tunnel source ports.
    49152 | (h & 0x3fff)
}

/// Errors of [`encapsulate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncapError {
    /// Not enough headroom in the buffer.
    NoHeadroom,
    /// No local address of the outer family to use as source.
    NoSource,
}

/// Encapsulate the (already TTL-decremented) IP packet for a tunnel to `outer_dst`: the
/// Ethernet header moves into the headroom and the outer headers are written behind it.
pub fn encapsulate(
    frame: &mut Frame<'_>,
    p: &Packet,
    outer_src: Option<IpAddr>,
    outer_dst: IpAddr,
    t: &TunnelConfig,
) -> Result<(), EncapError> {
    let outer_v6 = outer_dst.is_ipv6();
    let src = match (outer_src, outer_v6) {
        (Some(s @ IpAddr::V4(_)), false) | (Some(s @ IpAddr::V6(_)), true) => s,
        _ => return Err(EncapError::NoSource),
    };
    let over = tunnel_overhead(outer_v6, t);
    let inner_len = p.ip_len;
    // Drop anything after the IP packet (Ethernet padding) before prepending.
    frame.truncate(ETH_LEN + inner_len);
    if !frame.push(over) {
        return Err(EncapError::NoHeadroom);
    }
    let d = frame.data_mut();
    // The Ethernet addresses move to the new front; the EtherType is the outer header's.
    d.copy_within(over..over + eth::ADDRS.end, 0);
    put16(d, eth::TYPE.start, ethertype(outer_v6));
    let inner = ETH_LEN + over;
    let (inner_tos, inner_ttl, inner_df, inner_id) = if p.v6 {
        let ip = Ipv6View(&d[inner..]);
        (ip.traffic_class(), ip.hop_limit(), true, 0)
    } else {
        let ip = Ipv4View(&d[inner..]);
        (ip.tos(), ip.ttl(), ip.df(), ip.ident())
    };
    let inner_proto = if p.v6 { IPPROTO_IPV6 } else { IPPROTO_IPIP };
    let ip_hlen = ip_header_len(outer_v6);
    let l4_len = over - ip_hlen;
    let outer_proto = match t.kind {
        TunnelType::Ipip => inner_proto,
        TunnelType::Gue => IPPROTO_UDP,
        TunnelType::Gre => IPPROTO_GRE,
    };
    // ECN encapsulation (RFC 6040 normal mode): copy ECT, a CE inner becomes ECT(0) outside.
    let ecn = inner_tos & 3;
    let tos = (inner_tos & !3) | if ecn == 3 { 2 } else { ecn };
    let payload_len = l4_len + inner_len;
    match (src, outer_dst) {
        (IpAddr::V6(src), IpAddr::V6(dst)) => Ipv6Repr {
            traffic_class: tos,
            payload_len: payload_len as u16,
            next_header: outer_proto,
            hop_limit: inner_ttl,
            src,
            dst,
        }
        .emit(&mut d[ETH_LEN..]),
        (IpAddr::V4(src), IpAddr::V4(dst)) => Ipv4Repr {
            tos,
            total_len: (ip_hlen + payload_len) as u16,
            // With DF set the ID carries no meaning (RFC 6864); without it, reuse the inner ID.
            id: if inner_df { 0 } else { inner_id },
            df: inner_df,
            ttl: inner_ttl,
            proto: outer_proto,
            src,
            dst,
        }
        .emit(&mut d[ETH_LEN..]),
        _ => return Err(EncapError::NoSource),
    }
    let l4 = ETH_LEN + ip_hlen;
    let end = l4 + l4_len + inner_len;
    match t.kind {
        TunnelType::Ipip => {}
        TunnelType::Gue => {
            GueRepr {
                sport: flow_port(p),
                dport: t.port,
                inner_proto,
                inner_len,
            }
            .emit(&mut d[l4..]);
            // IPv6 has no UDP without a checksum (RFC 8200 8.1).
            if t.csum != TunnelCsum::NoCsum || outer_v6 {
                let mut c = l4_checksum(&src, &outer_dst, IPPROTO_UDP, &d[l4..end]);
                if c == 0 {
                    c = 0xffff;
                }
                put16(d, l4 + udp::CHECKSUM.start, c);
            }
        }
        TunnelType::Gre => {
            let g = gre_of(t, p.v6);
            g.emit(&mut d[l4..]);
            if g.csum {
                let c = checksum(&d[l4..end]);
                put16(d, l4 + header::gre::CHECKSUM.start, c);
            }
        }
    }
    Ok(())
}

/// ICMP error kinds xvs sends itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpError {
    /// No destination for a new connection: port unreachable.
    PortUnreachable,
    /// Too big for the path: fragmentation needed (IPv4) / packet too big (IPv6), with the MTU.
    TooBig(u16),
    /// TTL / hop limit exhausted.
    TimeExceeded,
}

/// Replace the frame with an ICMP error about it, addressed back to the packet's source and sent
/// from its destination (the VIP), quoting as much of the original as RFC 792 / 4443 allow.
/// The Ethernet addresses are swapped; the caller may overwrite them for a routed reply.
pub fn icmp_error_in_place(
    frame: &mut Frame<'_>,
    p: &Packet,
    kind: IcmpError,
) -> Result<(), EncapError> {
    // RFC 4443 2.4 (c) and RFC 1812 4.3.2.3: as much of the packet as fits in the minimum MTU
    // (IPv6) or in 576 bytes (IPv4).
    let ip_hlen = ip_header_len(p.v6);
    let hdr = ip_hlen + icmp::LEN;
    let max_total = if p.v6 { 1280 } else { 576 };
    let quoted = p.ip_len.min(max_total - hdr);
    frame.truncate(ETH_LEN + quoted);
    if !frame.push(hdr) {
        return Err(EncapError::NoHeadroom);
    }
    let d = frame.data_mut();
    // Ethernet: back to where it came from.
    let old = hdr;
    let mut macs = [[0u8; 6]; 2];
    macs[0].copy_from_slice(&d[old + eth::SRC.start..old + eth::SRC.end]);
    macs[1].copy_from_slice(&d[old + eth::DST.start..old + eth::DST.end]);
    header::emit_eth(d, macs[0], macs[1], ethertype(p.v6));
    let icmp_at = ETH_LEN + ip_hlen;
    let icmp_len = icmp::LEN + quoted;
    let (ty, code, mtu): (u8, u8, Option<u16>) = match (p.v6, kind) {
        (false, IcmpError::PortUnreachable) => (icmp::DEST_UNREACH, icmp::PORT_UNREACH, None),
        (false, IcmpError::TooBig(mtu)) => (icmp::DEST_UNREACH, icmp::FRAG_NEEDED, Some(mtu)),
        (false, IcmpError::TimeExceeded) => (icmp::TIME_EXCEEDED, 0, None),
        (true, IcmpError::PortUnreachable) => (icmp::V6_DST_UNREACH, icmp::V6_PORT_UNREACH, None),
        (true, IcmpError::TooBig(mtu)) => (icmp::V6_PKT_TOOBIG, 0, Some(mtu)),
        (true, IcmpError::TimeExceeded) => (icmp::V6_TIME_EXCEED, 0, None),
    };
    // IPv4's next-hop MTU is the low 16 bits of the rest (RFC 1191); IPv6's MTU is 32 bits.
    let rest = u32::from(mtu.unwrap_or(0)).to_be_bytes();
    match (p.daddr, p.saddr) {
        (IpAddr::V6(src), IpAddr::V6(dst)) => Ipv6Repr {
            traffic_class: 0,
            payload_len: icmp_len as u16,
            next_header: IPPROTO_ICMPV6,
            hop_limit: 64,
            src,
            dst,
        }
        .emit(&mut d[ETH_LEN..]),
        (IpAddr::V4(src), IpAddr::V4(dst)) => Ipv4Repr {
            tos: 0xc0, // network control, as the kernel's icmp_send uses
            total_len: (ip_hlen + icmp_len) as u16,
            id: 0,
            df: true,
            ttl: 64,
            proto: IPPROTO_ICMP,
            src,
            dst,
        }
        .emit(&mut d[ETH_LEN..]),
        _ => return Err(EncapError::NoSource),
    }
    IcmpRepr { ty, code, rest }.emit(&mut d[icmp_at..]);
    let end = icmp_at + icmp_len;
    let c = if p.v6 {
        l4_checksum(&p.daddr, &p.saddr, IPPROTO_ICMPV6, &d[icmp_at..end])
    } else {
        checksum(&d[icmp_at..end])
    };
    put16(d, icmp_at + icmp::CHECKSUM.start, c);
    Ok(())
}

/// Test helper: the first checksum of `frame` that does not verify, if any — the IPv4 header;
/// TCP, UDP and ICMPv6 with the pseudo-header (an IPv4 UDP checksum of 0 means none); ICMP.
#[cfg(test)]
pub(crate) fn bad_checksum(frame: &[u8]) -> Option<&'static str> {
    let Ok(p) = parse(frame) else {
        return Some("the frame does not parse");
    };
    let end = ETH_LEN + p.ip_len;
    if !p.v6 {
        let hl = Ipv4View(&frame[IP4..]).header_len();
        if checksum(&frame[IP4..IP4 + hl]) != 0 {
            return Some("IPv4 header checksum");
        }
    }
    let ok = match p.proto {
        IPPROTO_UDP if !p.v6 && be16(frame, p.l4 + udp::CHECKSUM.start) == 0 => true,
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6 => {
            l4_checksum(&p.saddr, &p.daddr, p.proto, &frame[p.l4..end]) == 0
        }
        IPPROTO_ICMP => checksum(&frame[p.l4..end]) == 0,
        IPPROTO_SCTP => {
            let seg = &frame[p.l4..end];
            seg[sctp::CHECKSUM] == sctp_checksum(seg)
        }
        _ => true,
    };
    (!ok).then_some("L4 checksum")
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    /// An IPv4 TCP (or UDP) frame with `payload` bytes of payload.
    fn frame(tcp: bool, payload: usize) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([1; 6], [2; 6]).ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64);
        let data = vec![0x5a; payload];
        let mut out = Vec::new();
        if tcp {
            b.tcp(40000, 80, 1, 1000)
                .syn()
                .ack(7)
                .write(&mut out, &data)
                .unwrap();
        } else {
            b.udp(40000, 53).write(&mut out, &data).unwrap();
        }
        out
    }

    #[test]
    fn a_frame_grows_in_place_when_it_can_else_into_the_headroom() {
        // Room behind the frame: it keeps its start, its bytes move back.
        let mut buf: Vec<u8> = (0..16).collect();
        let mut f = Frame::new(&mut buf, 4, 4);
        assert!(f.push(3));
        assert_eq!((f.start(), f.len()), (4, 7));
        assert_eq!(&f.data()[3..], &[4, 5, 6, 7]);
        // None behind it: into the headroom, the bytes stay where they are.
        let mut buf: Vec<u8> = (0..8).collect();
        let mut f = Frame::new(&mut buf, 4, 4);
        assert!(f.push(3));
        assert_eq!((f.start(), f.len()), (1, 7));
        assert_eq!(&f.data()[3..], &[4, 5, 6, 7]);
        // Neither: refused, the frame unchanged.
        let mut buf: Vec<u8> = (0..8).collect();
        let mut f = Frame::new(&mut buf, 2, 5);
        assert!(!f.push(3));
        assert_eq!((f.start(), f.data()), (2, &[2, 3, 4, 5, 6][..]));
    }

    #[test]
    fn ttl_decrement_patches_the_checksum_as_rfc_1624_does() {
        // Every checksum value (the carries included), against RFC 1624's update done in the
        // header's own byte order, and against a full recomputation.
        let f = frame(true, 0);
        let p = parse(&f).unwrap();
        for check in 0..=u16::MAX {
            let mut g = f.clone();
            g[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&check.to_be_bytes());
            dec_ttl(&mut g, &p);
            let sum = u32::from(check) + 0x0100;
            let want = (sum + (sum >> 16)) as u16;
            assert_eq!(be16(&g, ETH_LEN + 10), want, "checksum {check:#06x}");
            assert_eq!(g[ETH_LEN + 8], 63);
        }
        let mut g = f.clone();
        dec_ttl(&mut g, &p);
        assert_eq!(
            checksum(&g[ETH_LEN..ETH_LEN + 20]),
            0,
            "the header still verifies"
        );
    }

    #[test]
    fn the_fast_reader_takes_plain_tcp_and_udp() {
        for tcp in [true, false] {
            let f = frame(tcp, 10);
            let p = parse_ipv4_fast(&f).expect("fast path");
            assert_eq!(Ok(p), parse_general(&f));
            assert_eq!(
                (p.sport, p.dport, p.ttl),
                (40000, if tcp { 80 } else { 53 }, 64)
            );
            assert_eq!(p.tcp.syn() && p.tcp.ack(), tcp);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// A NAT rewrite of either side, to any address and port, leaves every checksum right,
        /// IPv4 and IPv6, TCP and UDP (and an IPv4 UDP datagram without a checksum without one).
        #[test]
        fn nat_rewrites_keep_every_checksum(
            v6 in any::<bool>(),
            tcp in any::<bool>(),
            no_udp_sum in any::<bool>(),
            src in any::<[u8; 16]>(),
            dst in any::<[u8; 16]>(),
            to in any::<[u8; 16]>(),
            ports in any::<(u16, u16, u16)>(),
            dst_side in any::<bool>(),
            payload in proptest::collection::vec(any::<u8>(), 0..41),
        ) {
            let b = PacketBuilder::ethernet2([1; 6], [2; 6]);
            let b = if v6 {
                b.ipv6(src, dst, 64)
            } else {
                let four = |a: [u8; 16]| [a[0], a[1], a[2], a[3]];
                b.ipv4(four(src), four(dst), 64)
            };
            let mut f = Vec::new();
            if tcp {
                b.tcp(ports.0, ports.1, 1, 1000).ack(7).write(&mut f, &payload).unwrap();
            } else {
                b.udp(ports.0, ports.1).write(&mut f, &payload).unwrap();
            }
            let p = parse(&f).unwrap();
            if !tcp && !v6 && no_udp_sum {
                put16(&mut f, p.l4 + 6, 0);
            }
            prop_assert_eq!(bad_checksum(&f), None);
            let to = if v6 {
                IpAddr::from(to)
            } else {
                IpAddr::from([to[0], to[1], to[2], to[3]])
            };
            let side = if dst_side { NatSide::Dst } else { NatSide::Src };
            nat_rewrite(&mut f, &p, side, to, ports.2);
            let q = parse(&f).unwrap();
            if dst_side {
                prop_assert_eq!((q.daddr, q.dport, q.saddr, q.sport), (to, ports.2, p.saddr, p.sport));
            } else {
                prop_assert_eq!((q.saddr, q.sport, q.daddr, q.dport), (to, ports.2, p.daddr, p.dport));
            }
            prop_assert_eq!(bad_checksum(&f), None);
            if !tcp && !v6 && no_udp_sum {
                prop_assert_eq!(be16(&f, p.l4 + 6), 0);
            }
        }
    }

    proptest! {
        /// The header `Ipv4Repr::emit` writes, with the checksum it sums from the fields,
        /// verifies, and etherparse reads back the fields it was given.
        #[test]
        fn written_ipv4_headers_verify(
            tos in any::<u8>(),
            total_len in 20u16..,
            id in any::<u16>(),
            df in any::<bool>(),
            ttl in any::<u8>(),
            proto in any::<u8>(),
            src in any::<[u8; 4]>(),
            dst in any::<[u8; 4]>(),
        ) {
            let h = Ipv4Repr {
                tos, total_len, id, df, ttl, proto, src: Ipv4Addr::from(src), dst: Ipv4Addr::from(dst),
            };
            // Whatever was there before is overwritten.
            let mut o = [0xa5u8; 24];
            h.emit(&mut o);
            prop_assert_eq!(checksum(&o[..20]), 0);
            prop_assert_eq!(&o[20..], &[0xa5u8; 4]);
            let ip = Ipv4HeaderSlice::from_slice(&o[..20]).unwrap();
            prop_assert_eq!(
                (ip.dcp().value() << 2 | ip.ecn().value(), ip.total_len(), ip.identification()),
                (tos, total_len, id)
            );
            prop_assert_eq!(
                (ip.dont_fragment(), ip.more_fragments(), ip.fragments_offset().value()),
                (df, false, 0)
            );
            prop_assert_eq!((ip.ttl(), ip.protocol().0), (ttl, proto));
            prop_assert_eq!((ip.source(), ip.destination()), (src, dst));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        /// Whatever bytes a frame holds, `parse` answers as etherparse's slices do, and the
        /// fast reader either declines or agrees. Frames are valid ones with a few header bits
        /// flipped, a few header bytes replaced, and sometimes cut short.
        #[test]
        fn the_fast_reader_agrees_with_etherparse(
            tcp in any::<bool>(),
            payload in 0usize..40,
            flips in proptest::collection::vec((12usize..60, 0u8..8), 0..3),
            bytes in proptest::collection::vec((12usize..60, any::<u8>()), 0..2),
            cut in proptest::option::of(1usize..100),
        ) {
            let mut f = frame(tcp, payload);
            for (at, bit) in flips {
                if let Some(b) = f.get_mut(at) {
                    *b ^= 1 << bit;
                }
            }
            for (at, v) in bytes {
                if let Some(b) = f.get_mut(at) {
                    *b = v;
                }
            }
            if let Some(n) = cut {
                f.truncate(n);
            }
            let general = parse_general(&f);
            if let Some(p) = parse_ipv4_fast(&f) {
                prop_assert_eq!(Ok(p), general);
            }
            prop_assert_eq!(parse(&f), general);
        }
    }
}
