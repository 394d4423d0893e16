//! The headers xvs reads and writes, as smoltcp's `wire` modules describe them: each header's
//! fields as byte ranges (`field`), a view over a header's bytes that reads and writes them by
//! name, and a representation (`…Repr`) that emits a whole header. Offsets are relative to the
//! header; the data path adds the header's place in the frame.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

/// A field's bytes within its header.
pub type Field = Range<usize>;

fn be16(b: &[u8], at: Field) -> u16 {
    u16::from_be_bytes([b[at.start], b[at.start + 1]])
}

fn put16(b: &mut [u8], at: Field, v: u16) {
    b[at].copy_from_slice(&v.to_be_bytes());
}

/// Ethernet II.
pub mod eth {
    use super::Field;
    /// Destination MAC.
    pub const DST: Field = 0..6;
    /// Source MAC.
    pub const SRC: Field = 6..12;
    /// Both MACs, destination first.
    pub const ADDRS: Field = 0..12;
    /// EtherType.
    pub const TYPE: Field = 12..14;
    /// Header length.
    pub const LEN: usize = 14;
    /// EtherType of IPv4.
    pub const P_IPV4: u16 = 0x0800;
    /// EtherType of IPv6.
    pub const P_IPV6: u16 = 0x86DD;
}

/// IPv4 (RFC 791).
pub mod ipv4 {
    use super::Field;
    /// Version and header length in 32-bit words.
    pub const VER_IHL: usize = 0;
    /// DSCP and ECN.
    pub const TOS: usize = 1;
    /// Total length.
    pub const LENGTH: Field = 2..4;
    /// Identification.
    pub const IDENT: Field = 4..6;
    /// Flags and fragment offset.
    pub const FLG_OFF: Field = 6..8;
    /// Time to live.
    pub const TTL: usize = 8;
    /// Protocol of the payload.
    pub const PROTOCOL: usize = 9;
    /// Header checksum.
    pub const CHECKSUM: Field = 10..12;
    /// Source address.
    pub const SRC: Field = 12..16;
    /// Destination address.
    pub const DST: Field = 16..20;
    /// Length of a header without options.
    pub const MIN_LEN: usize = 20;
    /// Version 4 and a 20-byte header.
    pub const VER_IHL_PLAIN: u8 = 0x45;
    /// Don't fragment, in `FLG_OFF`.
    pub const DF: u16 = 0x4000;
    /// More fragments and the fragment offset, in `FLG_OFF`.
    pub const MF_OFFSET: u16 = 0x3fff;
}

/// IPv6 (RFC 8200).
pub mod ipv6 {
    use super::Field;
    /// Version, traffic class and flow label.
    pub const VER_TC_FLOW: Field = 0..4;
    /// Payload length.
    pub const PAYLOAD_LEN: Field = 4..6;
    /// Next header.
    pub const NEXT_HEADER: usize = 6;
    /// Hop limit.
    pub const HOP_LIMIT: usize = 7;
    /// Source address.
    pub const SRC: Field = 8..24;
    /// Destination address.
    pub const DST: Field = 24..40;
    /// Header length.
    pub const LEN: usize = 40;
}

/// TCP (RFC 9293), the fields xvs reads.
pub mod tcp {
    use super::Field;
    /// Source port.
    pub const SRC_PORT: Field = 0..2;
    /// Destination port.
    pub const DST_PORT: Field = 2..4;
    /// Data offset (high nibble).
    pub const DATA_OFF: usize = 12;
    /// Flags.
    pub const FLAGS: usize = 13;
    /// Checksum.
    pub const CHECKSUM: Field = 16..18;
    /// Length of a header without options.
    pub const MIN_LEN: usize = 20;
}

/// SCTP common header (RFC 9260, section 3.1).
pub mod sctp {
    use super::Field;
    /// Source port.
    pub const SRC_PORT: Field = 0..2;
    /// Destination port.
    pub const DST_PORT: Field = 2..4;
    /// CRC32c checksum.
    pub const CHECKSUM: Field = 8..12;
    /// Common header length.
    pub const LEN: usize = 12;
    /// Chunk header length (type, flags, length).
    pub const CHUNK_LEN: usize = 4;
}

/// UDP (RFC 768).
pub mod udp {
    use super::Field;
    /// Source port.
    pub const SRC_PORT: Field = 0..2;
    /// Destination port.
    pub const DST_PORT: Field = 2..4;
    /// Length of header and payload.
    pub const LENGTH: Field = 4..6;
    /// Checksum.
    pub const CHECKSUM: Field = 6..8;
    /// Header length.
    pub const LEN: usize = 8;
}

/// ICMP and ICMPv6 (RFC 792, RFC 4443): the common header of an error.
pub mod icmp {
    use super::Field;
    /// Type.
    pub const TYPE: usize = 0;
    /// Code.
    pub const CODE: usize = 1;
    /// Checksum.
    pub const CHECKSUM: Field = 2..4;
    /// The rest of the header (unused, next-hop MTU, pointer).
    pub const REST: Field = 4..8;
    /// IPv4's next-hop MTU of "fragmentation needed" (RFC 1191).
    pub const NEXT_HOP_MTU: Field = 6..8;
    /// Header length; the quoted packet follows.
    pub const LEN: usize = 8;
    /// ICMP destination unreachable.
    pub const DEST_UNREACH: u8 = 3;
    /// ICMP source quench.
    pub const SOURCE_QUENCH: u8 = 4;
    /// ICMP time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
    /// Code of destination unreachable: port unreachable.
    pub const PORT_UNREACH: u8 = 3;
    /// Code of destination unreachable: fragmentation needed and DF set.
    pub const FRAG_NEEDED: u8 = 4;
    /// ICMPv6 destination unreachable.
    pub const V6_DST_UNREACH: u8 = 1;
    /// ICMPv6 packet too big.
    pub const V6_PKT_TOOBIG: u8 = 2;
    /// ICMPv6 time exceeded.
    pub const V6_TIME_EXCEED: u8 = 3;
    /// Code of ICMPv6 destination unreachable: port unreachable.
    pub const V6_PORT_UNREACH: u8 = 4;
    /// The first ICMPv6 informational type: every type below is an error.
    pub const V6_INFO_FIRST: u8 = 128;
}

/// GUE, variant 0 (draft-ietf-intarea-gue), behind its UDP header.
pub mod gue {
    use super::Field;
    /// Version (2 bits), C bit and header length of the options (5 bits).
    pub const VER_C_HLEN: usize = 0;
    /// Protocol of the encapsulated packet.
    pub const PROTO: usize = 1;
    /// Flags.
    pub const FLAGS: Field = 2..4;
    /// Header length without options.
    pub const LEN: usize = 4;
}

/// GRE (RFC 2784), with the optional checksum.
pub mod gre {
    use super::Field;
    /// C bit, reserved bits and version.
    pub const FLAGS_VER: Field = 0..2;
    /// EtherType of the encapsulated packet.
    pub const PROTO: Field = 2..4;
    /// Checksum (when C is set).
    pub const CHECKSUM: Field = 4..6;
    /// Reserved1 (when C is set).
    pub const RESERVED: Field = 6..8;
    /// The checksum-present bit of `FLAGS_VER`.
    pub const F_CSUM: u16 = 0x8000;
    /// Header length without the checksum.
    pub const LEN: usize = 4;
    /// Header length with it.
    pub const LEN_CSUM: usize = 8;
}

/// A view of the bytes of an IPv4 header (options allowed).
#[derive(Debug, Clone, Copy)]
pub struct Ipv4View<T>(pub T);

impl<T: AsRef<[u8]>> Ipv4View<T> {
    fn b(&self) -> &[u8] {
        self.0.as_ref()
    }
    /// Version (4 for a well-formed header).
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.b()[ipv4::VER_IHL] >> 4
    }
    /// Header length in bytes.
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[ipv4::VER_IHL] & 0xf) * 4
    }
    /// DSCP and ECN.
    #[inline(always)]
    pub fn tos(&self) -> u8 {
        self.b()[ipv4::TOS]
    }
    /// Total length.
    #[inline(always)]
    pub fn total_len(&self) -> u16 {
        be16(self.b(), ipv4::LENGTH)
    }
    /// Identification.
    #[inline(always)]
    pub fn ident(&self) -> u16 {
        be16(self.b(), ipv4::IDENT)
    }
    /// Don't fragment.
    #[inline(always)]
    pub fn df(&self) -> bool {
        be16(self.b(), ipv4::FLG_OFF) & ipv4::DF != 0
    }
    /// Time to live.
    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        self.b()[ipv4::TTL]
    }
    /// Protocol of the payload.
    #[inline(always)]
    pub fn protocol(&self) -> u8 {
        self.b()[ipv4::PROTOCOL]
    }
    /// Source address.
    #[inline(always)]
    pub fn src(&self) -> Ipv4Addr {
        addr4(&self.b()[ipv4::SRC])
    }
    /// Destination address.
    #[inline(always)]
    pub fn dst(&self) -> Ipv4Addr {
        addr4(&self.b()[ipv4::DST])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4View<T> {
    /// Recompute the header checksum over the header's length.
    pub fn fill_checksum(&mut self) {
        let hlen = self.header_len();
        let b = self.0.as_mut();
        b[ipv4::CHECKSUM].fill(0);
        let c = super::checksum(&b[..hlen]);
        put16(b, ipv4::CHECKSUM, c);
    }
}

/// A view of the bytes of an IPv6 header.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6View<T>(pub T);

impl<T: AsRef<[u8]>> Ipv6View<T> {
    fn b(&self) -> &[u8] {
        self.0.as_ref()
    }
    /// Version (6 for a well-formed header).
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.b()[0] >> 4
    }
    /// Traffic class (DSCP and ECN).
    #[inline(always)]
    pub fn traffic_class(&self) -> u8 {
        let b = self.b();
        (b[0] & 0x0f) << 4 | b[1] >> 4
    }
    /// Next header.
    #[inline(always)]
    pub fn next_header(&self) -> u8 {
        self.b()[ipv6::NEXT_HEADER]
    }
    /// Hop limit.
    #[inline(always)]
    pub fn hop_limit(&self) -> u8 {
        self.b()[ipv6::HOP_LIMIT]
    }
    /// Source address.
    #[inline(always)]
    pub fn src(&self) -> Ipv6Addr {
        addr6(&self.b()[ipv6::SRC])
    }
    /// Destination address.
    #[inline(always)]
    pub fn dst(&self) -> Ipv6Addr {
        addr6(&self.b()[ipv6::DST])
    }
}

fn addr4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn addr6(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    a.into()
}

/// Write an Ethernet header: `dst`, `src`, `ethertype`.
#[inline(always)]
pub fn emit_eth(o: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    let o = &mut o[..eth::LEN];
    o[eth::DST].copy_from_slice(&dst);
    o[eth::SRC].copy_from_slice(&src);
    put16(o, eth::TYPE, ethertype);
}

/// An IPv4 header without options, as xvs writes one (a tunnel's outer header, an ICMP error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    /// DSCP and ECN.
    pub tos: u8,
    /// Total length.
    pub total_len: u16,
    /// Identification.
    pub id: u16,
    /// Don't fragment.
    pub df: bool,
    /// Time to live.
    pub ttl: u8,
    /// Protocol of the payload.
    pub proto: u8,
    /// Source.
    pub src: Ipv4Addr,
    /// Destination.
    pub dst: Ipv4Addr,
}

impl Ipv4Repr {
    /// Write the header over the first 20 bytes of `o`, its checksum included. The checksum is
    /// summed from the fields, not read back from the frame: a load of bytes just written by
    /// several smaller stores cannot be forwarded from the store buffer and waits for those
    /// stores to reach the cache.
    pub fn emit(&self, o: &mut [u8]) {
        let frag: u16 = if self.df { ipv4::DF } else { 0 };
        let (s, d) = (u32::from(self.src), u32::from(self.dst));
        let sum = (u32::from(ipv4::VER_IHL_PLAIN) << 8 | u32::from(self.tos))
            + u32::from(self.total_len)
            + u32::from(self.id)
            + u32::from(frag)
            + (u32::from(self.ttl) << 8 | u32::from(self.proto))
            + (s >> 16)
            + (s & 0xffff)
            + (d >> 16)
            + (d & 0xffff);
        let o = &mut o[..ipv4::MIN_LEN];
        o[ipv4::VER_IHL] = ipv4::VER_IHL_PLAIN;
        o[ipv4::TOS] = self.tos;
        put16(o, ipv4::LENGTH, self.total_len);
        put16(o, ipv4::IDENT, self.id);
        put16(o, ipv4::FLG_OFF, frag);
        o[ipv4::TTL] = self.ttl;
        o[ipv4::PROTOCOL] = self.proto;
        put16(o, ipv4::CHECKSUM, !super::fold(sum));
        o[ipv4::SRC].copy_from_slice(&self.src.octets());
        o[ipv4::DST].copy_from_slice(&self.dst.octets());
    }
}

/// An IPv6 header without extension headers; flow label 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Repr {
    /// Traffic class (DSCP and ECN).
    pub traffic_class: u8,
    /// Payload length.
    pub payload_len: u16,
    /// Next header.
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Source.
    pub src: Ipv6Addr,
    /// Destination.
    pub dst: Ipv6Addr,
}

impl Ipv6Repr {
    /// Write the header over the first 40 bytes of `o`.
    pub fn emit(&self, o: &mut [u8]) {
        let o = &mut o[..ipv6::LEN];
        let first = 6u32 << 28 | u32::from(self.traffic_class) << 20;
        o[ipv6::VER_TC_FLOW].copy_from_slice(&first.to_be_bytes());
        put16(o, ipv6::PAYLOAD_LEN, self.payload_len);
        o[ipv6::NEXT_HEADER] = self.next_header;
        o[ipv6::HOP_LIMIT] = self.hop_limit;
        o[ipv6::SRC].copy_from_slice(&self.src.octets());
        o[ipv6::DST].copy_from_slice(&self.dst.octets());
    }
}

/// A UDP header and a GUE header of variant 0 without options: 12 bytes. The UDP checksum is
/// written as 0 (none); the caller fills it when one is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GueRepr {
    /// UDP source port (a flow hash, so the receiver can spread flows).
    pub sport: u16,
    /// UDP destination port.
    pub dport: u16,
    /// Protocol of the encapsulated packet (`IPPROTO_IPIP` or `IPPROTO_IPV6`).
    pub inner_proto: u8,
    /// Length of the encapsulated packet.
    pub inner_len: usize,
}

impl GueRepr {
    /// Bytes written.
    pub const LEN: usize = udp::LEN + gue::LEN;

    /// Write the headers over the first 12 bytes of `o`.
    pub fn emit(&self, o: &mut [u8]) {
        let (u, g) = o[..Self::LEN].split_at_mut(udp::LEN);
        put16(u, udp::SRC_PORT, self.sport);
        put16(u, udp::DST_PORT, self.dport);
        put16(u, udp::LENGTH, (Self::LEN + self.inner_len) as u16);
        put16(u, udp::CHECKSUM, 0);
        g[gue::VER_C_HLEN] = 0;
        g[gue::PROTO] = self.inner_proto;
        put16(g, gue::FLAGS, 0);
    }
}

/// A GRE header, with or without its checksum field (written as 0; the caller fills it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GreRepr {
    /// Whether the checksum is present.
    pub csum: bool,
    /// EtherType of the encapsulated packet.
    pub proto: u16,
}

impl GreRepr {
    /// Header length.
    pub fn header_len(&self) -> usize {
        if self.csum {
            gre::LEN_CSUM
        } else {
            gre::LEN
        }
    }

    /// Write the header over the first [`GreRepr::header_len`] bytes of `o`.
    pub fn emit(&self, o: &mut [u8]) {
        put16(o, gre::FLAGS_VER, if self.csum { gre::F_CSUM } else { 0 });
        put16(o, gre::PROTO, self.proto);
        if self.csum {
            put16(o, gre::CHECKSUM, 0);
            put16(o, gre::RESERVED, 0);
        }
    }
}

/// The header of an ICMP or ICMPv6 error, its checksum written as 0 (the caller fills it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpRepr {
    /// Type.
    pub ty: u8,
    /// Code.
    pub code: u8,
    /// The rest of the header.
    pub rest: [u8; 4],
}

impl IcmpRepr {
    /// Write the header over the first 8 bytes of `o`.
    pub fn emit(&self, o: &mut [u8]) {
        let o = &mut o[..icmp::LEN];
        o[icmp::TYPE] = self.ty;
        o[icmp::CODE] = self.code;
        o[icmp::CHECKSUM].fill(0);
        o[icmp::REST].copy_from_slice(&self.rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Ipv6HeaderSlice, UdpHeaderSlice};

    #[test]
    fn an_emitted_ipv6_header_reads_back() {
        let h = Ipv6Repr {
            traffic_class: 0xb9,
            payload_len: 1234,
            next_header: 4,
            hop_limit: 63,
            src: "2001:db8::1".parse().unwrap(),
            dst: "2001:db8::2".parse().unwrap(),
        };
        let mut o = [0xa5u8; 44];
        h.emit(&mut o);
        assert_eq!(&o[40..], &[0xa5; 4]);
        let v = Ipv6View(&o[..]);
        assert_eq!(
            (
                v.version(),
                v.traffic_class(),
                v.next_header(),
                v.hop_limit()
            ),
            (6, 0xb9, 4, 63)
        );
        assert_eq!((v.src(), v.dst()), (h.src, h.dst));
        let e = Ipv6HeaderSlice::from_slice(&o).unwrap();
        assert_eq!((e.traffic_class(), e.flow_label().value()), (0xb9, 0));
        assert_eq!(e.payload_length(), 1234);
    }

    #[test]
    fn emitted_gue_and_gre_headers_read_back() {
        let mut o = [0xa5u8; 12];
        let g = GueRepr {
            sport: 50000,
            dport: 6080,
            inner_proto: 4,
            inner_len: 100,
        };
        g.emit(&mut o);
        let u = UdpHeaderSlice::from_slice(&o).unwrap();
        assert_eq!((u.source_port(), u.destination_port()), (50000, 6080));
        assert_eq!((u.length(), u.checksum()), (112, 0));
        assert_eq!(&o[8..], &[0, 4, 0, 0]);

        let mut o = [0xa5u8; 8];
        let r = GreRepr {
            csum: true,
            proto: eth::P_IPV6,
        };
        r.emit(&mut o);
        assert_eq!((r.header_len(), o), (8, [0x80, 0, 0x86, 0xdd, 0, 0, 0, 0]));
        let mut o = [0xa5u8; 6];
        let r = GreRepr {
            csum: false,
            proto: eth::P_IPV4,
        };
        r.emit(&mut o);
        assert_eq!((r.header_len(), o), (4, [0, 0, 8, 0, 0xa5, 0xa5]));
    }
}
