//! The IPVS sync protocol's datagrams, as mainline writes and reads them (v6.12,
//! `net/netfilter/ipvs/ip_vs_sync.c`: `ip_vs_sync_conn`, `ip_vs_sync_conn_v0`,
//! `ip_vs_process_message`, `ip_vs_proc_sync_conn`; reference §5.3). Every multi-byte field is
//! big-endian.
//!
//! Version 1: an 8-byte header (0, syncid, size, count, version 1, spare 0), then records of 36
//! (IPv4) or 72 (IPv6) bytes and their options, each record after the first on a 4-byte
//! boundary. Version 0 (IPv4 only): a 4-byte header (count, syncid, size), records of 24 bytes,
//! 48 with sequence data. xvs writes both and reads both.
//!
//! A message is checked whole before any record is used: one that lies about a length, a
//! version or a type is refused as a whole ([`MessageError`]), where the kernel keeps the
//! records before the bad one. A record refused on its own ([`RecordError`]: a protocol or a
//! state xvs does not know, an unknown mandatory option) leaves the others.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::proto::{SCTP_STATES, TCP_STATES};
use crate::wire::{IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};

/// The default multicast group (IPv4).
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 81);
/// The default UDP port; `sync_ports` sockets use the ports from it on.
pub const PORT: u16 = 8848;

/// Version 1 header length.
pub const HEADER_V1: usize = 8;
/// Version 0 header length.
pub const HEADER_V0: usize = 4;
/// Version 1 IPv4 record without options.
pub const RECORD_V4: usize = 36;
/// Version 1 IPv6 record without options.
pub const RECORD_V6: usize = 72;
/// Version 0 record without sequence data.
pub const RECORD_V0: usize = 24;
/// Sequence data: in and out, each initial sequence, delta and previous delta.
pub const SEQ_LEN: usize = 24;

/// Connection flags on the wire (the kernel's `IP_VS_CONN_F_*`; xvs's `CONN_F_*` are the same
/// bits).
pub mod flags {
    /// Forwarding method mask.
    pub const FWD_MASK: u32 = 0x0007;
    /// NAT.
    pub const MASQ: u32 = 0;
    /// Local node.
    pub const LOCALNODE: u32 = 1;
    /// Tunnel.
    pub const TUNNEL: u32 = 2;
    /// Direct routing.
    pub const DROUTE: u32 = 3;
    /// Cache bypass.
    pub const BYPASS: u32 = 4;
    /// Entry created from a sync message.
    pub const SYNC: u32 = 0x0020;
    /// Hashed (never sent).
    pub const HASHED: u32 = 0x0040;
    /// No reply seen.
    pub const NOOUTPUT: u32 = 0x0080;
    /// Counts in InActConn.
    pub const INACTIVE: u32 = 0x0100;
    /// Out sequence data valid.
    pub const OUT_SEQ: u32 = 0x0200;
    /// In sequence data valid.
    pub const IN_SEQ: u32 = 0x0400;
    /// Either sequence data.
    pub const SEQ_MASK: u32 = 0x0600;
    /// Client port unknown yet.
    pub const NO_CPORT: u32 = 0x0800;
    /// A persistence template.
    pub const TEMPLATE: u32 = 0x1000;
    /// One-packet scheduling.
    pub const ONE_PACKET: u32 = 0x2000;
    /// What a backup takes of a record's flags (`IP_VS_CONN_F_BACKUP_MASK`).
    pub const BACKUP_MASK: u32 = FWD_MASK | NOOUTPUT | INACTIVE | SEQ_MASK | NO_CPORT | TEMPLATE;
    /// What a backup updates on an entry it has (`IP_VS_CONN_F_BACKUP_UPD_MASK`).
    pub const BACKUP_UPD_MASK: u32 = INACTIVE | SEQ_MASK;
}

/// The version byte of xvs's request for a full table dump (an extension of the protocol):
/// an 8-byte version 1 header with this version and no record. A kernel backup or master
/// reads it as a version 0 message of no connection, and ignores it.
pub const DUMP_REQUEST_VERSION: u8 = 0xd1;

/// The request for a full dump, for `syncid`.
pub fn dump_request(syncid: u8) -> [u8; HEADER_V1] {
    [0, syncid, 0, HEADER_V1 as u8, 0, DUMP_REQUEST_VERSION, 0, 0]
}

/// The sync id of a full-dump request, if `buf` is one.
pub fn is_dump_request(buf: &[u8]) -> Option<u8> {
    (buf.len() == HEADER_V1
        && buf[0] == 0
        && buf[2..4] == [0, HEADER_V1 as u8]
        && buf[4] == 0
        && buf[5] == DUMP_REQUEST_VERSION
        && buf[6..8] == [0, 0])
    .then_some(buf[1])
}

const STYPE_F_INET6: u8 = 1;
const SVER_SHIFT: u16 = 12;
const SVER_MASK: u16 = 0x0fff;
const OPT_SEQ_DATA: u8 = 1;
const OPT_PE_DATA: u8 = 2;
const OPT_PE_NAME: u8 = 3;
/// An option type with this bit may be skipped when unknown.
const OPT_F_PARAM: u8 = 0x40;
const PE_DATA_MAX: usize = 255;
const PE_NAME_MAX: usize = 16;

/// One connection or template as the protocol carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncConn {
    /// IP protocol (0 for a fwmark template).
    pub proto: u8,
    /// Connection flags ([`flags`]).
    pub flags: u32,
    /// Protocol state (TCP state number; 0 for UDP; template state).
    pub state: u16,
    /// Client address.
    pub caddr: IpAddr,
    /// Client port.
    pub cport: u16,
    /// Virtual address (the fwmark as an IPv4 address for a fwmark template).
    pub vaddr: IpAddr,
    /// Virtual port.
    pub vport: u16,
    /// Real-server address.
    pub daddr: IpAddr,
    /// Real-server port.
    pub dport: u16,
    /// Firewall mark (version 1).
    pub fwmark: u32,
    /// The state's full timeout, seconds (version 1; 0 from version 0).
    pub timeout: u32,
    /// A template's persistence-engine data (version 1 options `PE_DATA` and `PE_NAME`; the
    /// only engine is sip, whose data is the Call-ID).
    pub pe: Option<PeData>,
}

/// Persistence-engine data of the sip engine: up to 255 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PeData {
    len: u8,
    bytes: [u8; PE_DATA_MAX],
}

impl PeData {
    /// `data` (None when empty or longer than 255 bytes).
    pub fn new(data: &[u8]) -> Option<PeData> {
        let len = u8::try_from(data.len()).ok().filter(|&l| l > 0)?;
        let mut bytes = [0; PE_DATA_MAX];
        bytes[..data.len()].copy_from_slice(data);
        Some(PeData { len, bytes })
    }

    /// The data.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for PeData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeData({:?})", String::from_utf8_lossy(self.bytes()))
    }
}

/// The name of the one persistence engine (`PE_NAME` option).
const PE_SIP: &[u8] = b"sip";

impl SyncConn {
    fn v6(&self) -> bool {
        self.caddr.is_ipv6()
    }

    /// Bytes of its version 1 record: the fixed part, and the PE options of a SIP template
    /// (xvs sends no sequence data).
    pub fn record_len(&self) -> usize {
        let fixed = if self.v6() { RECORD_V6 } else { RECORD_V4 };
        fixed
            + self
                .pe
                .map_or(0, |pe| 2 + pe.bytes().len() + 2 + PE_SIP.len())
    }
}

/// Why a datagram was refused as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageError {
    /// Shorter than any header.
    TooShort,
    /// The size field is not the datagram's length.
    BadSize,
    /// Another sync id than the backup's.
    SyncId,
    /// A record runs past the end, or its size is below its type's.
    BadRecordSize,
    /// A record of a version other than 0.
    RecordVersion,
    /// A record type other than IPv4 or IPv6.
    RecordType,
    /// An option with length 0, running past its record, or given twice.
    BadOption,
    /// Bytes after the last record.
    Trailing,
}

impl MessageError {
    /// Every error, for counters.
    pub const ALL: [MessageError; 8] = [
        MessageError::TooShort,
        MessageError::BadSize,
        MessageError::SyncId,
        MessageError::BadRecordSize,
        MessageError::RecordVersion,
        MessageError::RecordType,
        MessageError::BadOption,
        MessageError::Trailing,
    ];

    /// Counter name.
    pub fn name(self) -> &'static str {
        match self {
            MessageError::TooShort => "too_short",
            MessageError::BadSize => "bad_size",
            MessageError::SyncId => "other_syncid",
            MessageError::BadRecordSize => "bad_record_size",
            MessageError::RecordVersion => "record_version",
            MessageError::RecordType => "record_type",
            MessageError::BadOption => "bad_option",
            MessageError::Trailing => "trailing_bytes",
        }
    }
}

/// Why one record was skipped (the message's other records are used).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// A protocol xvs does not balance.
    Protocol,
    /// A state out of the protocol's range.
    State,
    /// An unknown option that is not marked optional.
    MandatoryOption,
    /// Persistence-engine data (xvs has no persistence engines).
    PersistenceEngine,
}

/// A decoded datagram: its version and records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Protocol version (0 or 1).
    pub version: u8,
    /// Sync id.
    pub syncid: u8,
    /// Records, each usable or refused.
    pub records: Vec<Result<SyncConn, RecordError>>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn v4(b: &[u8], at: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]))
}

fn v6(b: &[u8], at: usize) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    IpAddr::V6(Ipv6Addr::from(a))
}

/// The protocol and state checks of a record (`ip_vs_proc_sync_conn`): a template's protocol
/// and state are not checked.
fn check(c: &SyncConn) -> Result<(), RecordError> {
    if c.flags & flags::TEMPLATE != 0 {
        return Ok(());
    }
    let states = match c.proto {
        IPPROTO_TCP => TCP_STATES,
        IPPROTO_UDP => 1,
        IPPROTO_SCTP => SCTP_STATES,
        _ => return Err(RecordError::Protocol),
    };
    if usize::from(c.state) >= states {
        return Err(RecordError::State);
    }
    Ok(())
}

/// Decode a datagram. `syncid`: the backup's sync id (0 takes every id).
pub fn decode(buf: &[u8], syncid: u8) -> Result<Message, MessageError> {
    if buf.len() < HEADER_V0 {
        return Err(MessageError::TooShort);
    }
    if usize::from(be16(buf, 2)) != buf.len() {
        return Err(MessageError::BadSize);
    }
    if syncid != 0 && buf[1] != syncid {
        return Err(MessageError::SyncId);
    }
    if buf.len() >= HEADER_V1 && buf[0] == 0 && buf[5] == 1 && be16(buf, 6) == 0 {
        decode_v1(buf)
    } else {
        decode_v0(buf)
    }
}

fn decode_v1(buf: &[u8]) -> Result<Message, MessageError> {
    let count = usize::from(buf[4]);
    let mut records = Vec::with_capacity(count);
    let mut at = HEADER_V1;
    for i in 0..count {
        if i > 0 {
            at = (at + 3) & !3;
        }
        if at + RECORD_V4 > buf.len() {
            return Err(MessageError::BadRecordSize);
        }
        let ver_size = be16(buf, at + 2);
        let size = usize::from(ver_size & SVER_MASK);
        let end = at + size;
        if end > buf.len() {
            return Err(MessageError::BadRecordSize);
        }
        if ver_size >> SVER_SHIFT != 0 {
            return Err(MessageError::RecordVersion);
        }
        records.push(decode_v1_record(&buf[at..end])?);
        at = end;
    }
    // Padding goes before a record, never after the last.
    if at != buf.len() {
        return Err(MessageError::Trailing);
    }
    Ok(Message {
        version: 1,
        syncid: buf[1],
        records,
    })
}

fn decode_v1_record(r: &[u8]) -> Result<Result<SyncConn, RecordError>, MessageError> {
    // A record's own size below the smallest record (the kernel: `p > msg_end` past the
    // IPv4 part) refuses the message.
    let Some(&ty) = r.first().filter(|_| r.len() >= RECORD_V4) else {
        return Err(MessageError::BadRecordSize);
    };
    let is_v6 = if ty & STYPE_F_INET6 != 0 {
        true
    } else if ty == 0 {
        false
    } else {
        return Err(MessageError::RecordType);
    };
    let base = if is_v6 { RECORD_V6 } else { RECORD_V4 };
    if r.len() < base {
        return Err(MessageError::BadRecordSize);
    }
    let (caddr, vaddr, daddr) = if is_v6 {
        (v6(r, 24), v6(r, 40), v6(r, 56))
    } else {
        (v4(r, 24), v4(r, 28), v4(r, 32))
    };
    let c = SyncConn {
        proto: r[1],
        flags: be32(r, 4) & flags::BACKUP_MASK,
        state: be16(r, 8),
        cport: be16(r, 10),
        vport: be16(r, 12),
        dport: be16(r, 14),
        fwmark: be32(r, 16),
        timeout: be32(r, 20),
        caddr,
        vaddr,
        daddr,
        pe: None,
    };
    // Options: type, length (not 0), data.
    let mut c = c;
    let mut p = base;
    let mut seen = 0u8;
    let mut refused = None;
    let (mut pe_data, mut pe_name) = (None, None);
    while p < r.len() {
        if p + 2 > r.len() {
            return Err(MessageError::BadOption);
        }
        let (ty, len) = (r[p], usize::from(r[p + 1]));
        p += 2;
        if len == 0 || p + len > r.len() {
            return Err(MessageError::BadOption);
        }
        let (bit, max) = match ty & !OPT_F_PARAM {
            OPT_SEQ_DATA => (1, SEQ_LEN),
            OPT_PE_DATA => (2, PE_DATA_MAX),
            OPT_PE_NAME => (4, PE_NAME_MAX),
            _ => {
                if ty & OPT_F_PARAM == 0 {
                    refused.get_or_insert(RecordError::MandatoryOption);
                }
                p += len;
                continue;
            }
        };
        let bad_len = if bit == 1 { len != max } else { len > max };
        if bad_len || seen & bit != 0 {
            return Err(MessageError::BadOption);
        }
        seen |= bit;
        match bit {
            2 => pe_data = Some(&r[p..p + len]),
            4 => pe_name = Some(&r[p..p + len]),
            _ => {}
        }
        p += len;
    }
    // `ip_vs_conn_fill_param_sync`: data needs the name of an engine this node has (sip).
    if let Some(data) = pe_data {
        // (The kernel reads the name as a C string: up to its first NUL.)
        let name = pe_name.map(|n| n.split(|&b| b == 0).next().unwrap_or(n));
        if name == Some(PE_SIP) {
            c.pe = PeData::new(data);
        } else {
            refused.get_or_insert(RecordError::PersistenceEngine);
        }
    }
    Ok(match refused {
        Some(e) => Err(e),
        None => check(&c).map(|()| c),
    })
}

fn decode_v0(buf: &[u8]) -> Result<Message, MessageError> {
    let count = usize::from(buf[0]);
    let mut records = Vec::with_capacity(count);
    let mut at = HEADER_V0;
    for _ in 0..count {
        if at + RECORD_V0 > buf.len() {
            return Err(MessageError::BadRecordSize);
        }
        let r = &buf[at..];
        let fl = u32::from(be16(r, 20));
        let len = if fl & flags::SEQ_MASK != 0 {
            RECORD_V0 + SEQ_LEN
        } else {
            RECORD_V0
        };
        if at + len > buf.len() {
            return Err(MessageError::BadRecordSize);
        }
        let c = SyncConn {
            proto: r[1],
            flags: fl & flags::BACKUP_MASK,
            state: be16(r, 22),
            cport: be16(r, 2),
            vport: be16(r, 4),
            dport: be16(r, 6),
            caddr: v4(r, 8),
            vaddr: v4(r, 12),
            daddr: v4(r, 16),
            fwmark: 0,
            pe: None,
            timeout: 0,
        };
        records.push(check(&c).map(|()| c));
        at += len;
    }
    if at != buf.len() {
        return Err(MessageError::Trailing);
    }
    Ok(Message {
        version: 0,
        syncid: buf[1],
        records,
    })
}

/// A datagram being filled: records are added until the next would not fit in `maxlen`.
#[derive(Debug, Clone)]
pub struct MessageWriter {
    buf: Vec<u8>,
    version: u8,
    maxlen: usize,
}

impl MessageWriter {
    /// An empty message of `version` (0 or 1) for `syncid`, at most `maxlen` bytes.
    pub fn new(version: u8, syncid: u8, maxlen: usize) -> MessageWriter {
        let mut w = MessageWriter {
            buf: Vec::with_capacity(maxlen),
            version,
            maxlen,
        };
        w.reset(syncid);
        w
    }

    /// Empty the message (for `syncid`).
    pub fn reset(&mut self, syncid: u8) {
        self.buf.clear();
        if self.version == 0 {
            self.buf.extend_from_slice(&[0, syncid, 0, HEADER_V0 as u8]);
        } else {
            self.buf
                .extend_from_slice(&[0, syncid, 0, HEADER_V1 as u8, 0, 1, 0, 0]);
        }
    }

    /// Records in it.
    pub fn count(&self) -> usize {
        usize::from(self.buf[if self.version == 0 { 0 } else { 4 }])
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// The datagram.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Add `c`; false (and nothing added) when it does not fit, holds 255 records already, or
    /// cannot be carried by the version (an IPv6 connection in version 0).
    pub fn push(&mut self, c: &SyncConn) -> bool {
        if self.count() == 255 {
            return false;
        }
        let ok = if self.version == 0 {
            self.push_v0(c)
        } else {
            self.push_v1(c)
        };
        if ok {
            let n = self.buf.len() as u16;
            self.buf[2..4].copy_from_slice(&n.to_be_bytes());
            let at = if self.version == 0 { 0 } else { 4 };
            self.buf[at] += 1;
        }
        ok
    }

    fn push_v1(&mut self, c: &SyncConn) -> bool {
        let pad = if self.is_empty() {
            0
        } else {
            (4 - self.buf.len() % 4) % 4
        };
        let len = c.record_len();
        if self.buf.len() + pad + len > self.maxlen {
            return false;
        }
        self.buf.resize(self.buf.len() + pad, 0);
        let b = &mut self.buf;
        b.push(if c.v6() { STYPE_F_INET6 } else { 0 });
        b.push(c.proto);
        b.extend_from_slice(&(len as u16 & SVER_MASK).to_be_bytes());
        b.extend_from_slice(&(c.flags & !flags::HASHED).to_be_bytes());
        b.extend_from_slice(&c.state.to_be_bytes());
        for port in [c.cport, c.vport, c.dport] {
            b.extend_from_slice(&port.to_be_bytes());
        }
        b.extend_from_slice(&c.fwmark.to_be_bytes());
        b.extend_from_slice(&c.timeout.to_be_bytes());
        for a in [c.caddr, c.vaddr, c.daddr] {
            match a {
                IpAddr::V4(a) => b.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => b.extend_from_slice(&a.octets()),
            }
        }
        // `ip_vs_sync_conn`: the engine's data, then its name.
        if let Some(pe) = &c.pe {
            b.extend_from_slice(&[OPT_PE_DATA, pe.len]);
            b.extend_from_slice(pe.bytes());
            b.extend_from_slice(&[OPT_PE_NAME, PE_SIP.len() as u8]);
            b.extend_from_slice(PE_SIP);
        }
        true
    }

    fn push_v0(&mut self, c: &SyncConn) -> bool {
        let (IpAddr::V4(ca), IpAddr::V4(va), IpAddr::V4(da)) = (c.caddr, c.vaddr, c.daddr) else {
            return false;
        };
        if self.buf.len() + RECORD_V0 > self.maxlen {
            return false;
        }
        let b = &mut self.buf;
        b.push(0);
        b.push(c.proto);
        for port in [c.cport, c.vport, c.dport] {
            b.extend_from_slice(&port.to_be_bytes());
        }
        for a in [ca, va, da] {
            b.extend_from_slice(&a.octets());
        }
        // No sequence data is kept: the flags say so.
        let fl = (c.flags & !(flags::HASHED | flags::SEQ_MASK)) as u16;
        b.extend_from_slice(&fl.to_be_bytes());
        b.extend_from_slice(&c.state.to_be_bytes());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(c: &str, v: &str, d: &str) -> SyncConn {
        SyncConn {
            proto: IPPROTO_TCP,
            flags: flags::DROUTE | flags::NOOUTPUT,
            state: 1,
            caddr: c.parse().unwrap(),
            cport: 40000,
            vaddr: v.parse().unwrap(),
            vport: 80,
            daddr: d.parse().unwrap(),
            dport: 8080,
            fwmark: 0,
            timeout: 900,
            pe: None,
        }
    }

    /// A SIP template's record carries the Call-ID and the engine's name as the kernel's
    /// `ip_vs_sync_conn` writes them (data, then name), and reads back; data without the
    /// name, or with another engine's, refuses the record.
    #[test]
    fn pe_data_of_sip_templates() {
        let call = b"a84b4c76e66710@pc33.atlanta.com";
        let t = SyncConn {
            proto: IPPROTO_UDP,
            flags: flags::TEMPLATE,
            state: 0,
            cport: 0,
            vport: 5060,
            dport: 5060,
            timeout: 60,
            pe: PeData::new(call),
            ..conn("10.9.0.0", "10.0.0.1", "192.168.1.2")
        };
        let mut w = MessageWriter::new(1, 0, 1472);
        assert!(w.push(&conn("10.9.0.5", "10.0.0.1", "192.168.1.2")));
        assert!(w.push(&t));
        let b = w.bytes();
        // The second record starts on a 4-byte boundary after the first (36 bytes).
        let r = &b[8 + RECORD_V4..];
        let len = RECORD_V4 + 2 + call.len() + 2 + 3;
        assert_eq!(usize::from(be16(r, 2) & SVER_MASK), len);
        assert_eq!(
            &r[RECORD_V4..RECORD_V4 + 2],
            &[OPT_PE_DATA, call.len() as u8]
        );
        assert_eq!(&r[RECORD_V4 + 2..RECORD_V4 + 2 + call.len()], call);
        assert_eq!(&r[len - 5..len], b"\x03\x03sip");
        let m = decode(b, 0).unwrap();
        assert_eq!(m.records[1], Ok(t));
        // Data without a name; then the name of an engine this node does not have.
        let mut no_name = b.to_vec();
        no_name[8 + RECORD_V4 + len - 5] = 0x40 | 9; // an optional unknown option
        assert_eq!(
            decode(&no_name, 0).unwrap().records[1],
            Err(RecordError::PersistenceEngine)
        );
        let mut other = b.to_vec();
        other[8 + RECORD_V4 + len - 3..8 + RECORD_V4 + len].copy_from_slice(b"ftp");
        assert_eq!(
            decode(&other, 0).unwrap().records[1],
            Err(RecordError::PersistenceEngine)
        );
    }

    /// A version 1 datagram laid out by hand from `struct ip_vs_sync_mesg` and
    /// `struct ip_vs_sync_v4`/`_v6`: one IPv4 record with sequence data, one IPv6 record after
    /// its padding... (both as the kernel writes them: `ip_vs_sync_conn`).
    fn kernel_v1() -> Vec<u8> {
        let mut m = vec![0u8, 7, 0, 0, 2, 1, 0, 0];
        // IPv4: type 0, TCP, size 36 + 2 + 24, flags DR|NOOUTPUT|IN_SEQ, ESTABLISHED.
        let rec4_len = 36 + 2 + 24;
        m.extend_from_slice(&[0, 6]);
        m.extend_from_slice(&(rec4_len as u16).to_be_bytes());
        m.extend_from_slice(&(0x0003u32 | 0x80 | 0x400 | 0x40).to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&[0x9c, 0x40, 0, 80, 0x1f, 0x90]); // 40000, 80, 8080
        m.extend_from_slice(&0u32.to_be_bytes());
        m.extend_from_slice(&900u32.to_be_bytes());
        m.extend_from_slice(&[10, 9, 0, 5, 10, 0, 0, 1, 192, 168, 1, 2]);
        m.extend_from_slice(&[1, 24]);
        m.extend_from_slice(&[0xab; 24]);
        // Padding to 4 bytes (62 → 64 from the record's start at 8: 70 → 72).
        m.extend_from_slice(&[0, 0]);
        // IPv6: type 1, UDP, size 72, flags MASQ, state 0, fwmark 5, timeout 300.
        m.extend_from_slice(&[1, 17, 0, 72]);
        m.extend_from_slice(&0u32.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        m.extend_from_slice(&[0x13, 0x88, 0, 53, 0x14, 0xe9]); // 5000, 53, 5353
        m.extend_from_slice(&5u32.to_be_bytes());
        m.extend_from_slice(&300u32.to_be_bytes());
        for a in ["fd09::5", "fd00::1", "fd01::3"] {
            m.extend_from_slice(&a.parse::<Ipv6Addr>().unwrap().octets());
        }
        let n = m.len() as u16;
        m[2..4].copy_from_slice(&n.to_be_bytes());
        m
    }

    #[test]
    fn a_kernel_version_1_datagram_decodes_field_by_field() {
        let m = decode(&kernel_v1(), 0).unwrap();
        assert_eq!((m.version, m.syncid, m.records.len()), (1, 7, 2));
        let a = m.records[0].unwrap();
        assert_eq!(
            a,
            SyncConn {
                // HASHED is not taken; the sequence flag is.
                flags: flags::DROUTE | flags::NOOUTPUT | flags::IN_SEQ,
                ..conn("10.9.0.5", "10.0.0.1", "192.168.1.2")
            }
        );
        let b = m.records[1].unwrap();
        assert_eq!(b.proto, IPPROTO_UDP);
        assert_eq!((b.cport, b.vport, b.dport), (5000, 53, 5353));
        assert_eq!((b.fwmark, b.timeout, b.flags), (5, 300, flags::MASQ));
        assert_eq!(b.daddr, "fd01::3".parse::<IpAddr>().unwrap());
        // Sync id filter.
        assert_eq!(decode(&kernel_v1(), 8), Err(MessageError::SyncId));
        assert!(decode(&kernel_v1(), 7).is_ok());
    }

    #[test]
    fn a_kernel_version_0_datagram_decodes() {
        // struct ip_vs_sync_mesg_v0, then struct ip_vs_sync_conn_v0.
        let mut m = vec![1u8, 3, 0, 28];
        m.extend_from_slice(&[0, 6, 0x9c, 0x40, 0, 80, 0x1f, 0x90]);
        m.extend_from_slice(&[10, 9, 0, 5, 10, 0, 0, 1, 192, 168, 1, 2]);
        m.extend_from_slice(&0x0083u16.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        let d = decode(&m, 3).unwrap();
        assert_eq!(d.version, 0);
        assert_eq!(
            d.records,
            vec![Ok(SyncConn {
                timeout: 0,
                ..conn("10.9.0.5", "10.0.0.1", "192.168.1.2")
            })]
        );
    }

    #[test]
    fn written_messages_read_back_and_respect_maxlen() {
        for version in [0u8, 1] {
            let mut w = MessageWriter::new(version, 9, 200);
            let a = conn("10.9.0.5", "10.0.0.1", "192.168.1.2");
            let mut n = 0;
            while w.push(&SyncConn { cport: n, ..a }) {
                n += 1;
            }
            let per = if version == 0 { RECORD_V0 } else { RECORD_V4 };
            let hdr = if version == 0 { HEADER_V0 } else { HEADER_V1 };
            assert_eq!(usize::from(n), (200 - hdr) / per, "version {version}");
            assert!(w.bytes().len() <= 200);
            let m = decode(w.bytes(), 9).unwrap();
            assert_eq!(m.records.len(), usize::from(n));
            let want_timeout = if version == 0 { 0 } else { 900 };
            for (i, r) in m.records.iter().enumerate() {
                assert_eq!(
                    r,
                    &Ok(SyncConn {
                        cport: i as u16,
                        timeout: want_timeout,
                        ..a
                    })
                );
            }
        }
        // IPv6 after IPv4, and version 0 refuses IPv6.
        let mut w = MessageWriter::new(1, 0, 1472);
        assert!(w.push(&conn("10.9.0.5", "10.0.0.1", "192.168.1.2")));
        assert!(w.push(&conn("fd09::5", "fd00::1", "fd01::3")));
        assert_eq!(decode(w.bytes(), 0).unwrap().records.len(), 2);
        assert!(!MessageWriter::new(0, 0, 1472).push(&conn("fd09::5", "fd00::1", "fd01::3")));
    }

    #[test]
    fn lying_lengths_and_foreign_bytes_refuse_the_whole_message() {
        let good = kernel_v1();
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut m = good.clone();
            f(&mut m);
            decode(&m, 0)
        };
        assert_eq!(decode(&good[..3], 0), Err(MessageError::TooShort));
        assert_eq!(decode(&good[..40], 0), Err(MessageError::BadSize));
        // Two records announced, three claimed.
        assert_eq!(with(&|m| m[4] = 3), Err(MessageError::BadRecordSize));
        // The first record claims more than there is.
        assert_eq!(
            with(&|m| m[10..12].copy_from_slice(&2000u16.to_be_bytes())),
            Err(MessageError::BadRecordSize)
        );
        // A record of version 1.
        assert_eq!(with(&|m| m[10] |= 0x10), Err(MessageError::RecordVersion));
        // A record type that is neither IPv4 nor IPv6.
        assert_eq!(with(&|m| m[8] = 2), Err(MessageError::RecordType));
        // A record whose own size is 0, or less than an IPv4 record (found by fuzzing).
        assert_eq!(
            with(&|m| m[10..12].copy_from_slice(&[0, 0])),
            Err(MessageError::BadRecordSize)
        );
        assert_eq!(
            with(&|m| m[10..12].copy_from_slice(&[0, 20])),
            Err(MessageError::BadRecordSize)
        );
        // An option of length 0.
        assert_eq!(with(&|m| m[45] = 0), Err(MessageError::BadOption));
        // Sequence data of the wrong length.
        assert_eq!(with(&|m| m[45] = 20), Err(MessageError::BadOption));
        // One record announced, two there.
        assert_eq!(with(&|m| m[4] = 1), Err(MessageError::Trailing));
    }

    #[test]
    fn a_dump_request_is_recognised_and_a_kernel_reads_it_as_nothing() {
        let r = dump_request(7);
        assert_eq!(is_dump_request(&r), Some(7));
        assert_eq!(is_dump_request(&kernel_v1()), None);
        // As the kernel reads it (`ip_vs_process_message`: not version 1, so version 0 with
        // byte 0 as the count): a message of no connection.
        assert_eq!(r[0], 0);
        assert_ne!(r[5], 1);
    }

    #[test]
    fn bad_records_are_skipped_alone() {
        // An unknown protocol, an out-of-range state, an unknown mandatory option.
        let mut w = MessageWriter::new(1, 0, 1472);
        let a = conn("10.9.0.5", "10.0.0.1", "192.168.1.2");
        w.push(&SyncConn { proto: 47, ..a });
        w.push(&SyncConn { state: 11, ..a });
        w.push(&a);
        // A template's protocol and state are not checked.
        w.push(&SyncConn {
            proto: 0,
            state: 9,
            flags: flags::TEMPLATE,
            ..a
        });
        // SCTP's 14 states (`IP_VS_SCTP_S_LAST`): CLOSED (13) is one, 14 is not.
        w.push(&SyncConn {
            proto: IPPROTO_SCTP,
            state: 13,
            ..a
        });
        w.push(&SyncConn {
            proto: IPPROTO_SCTP,
            state: 14,
            ..a
        });
        let m = decode(w.bytes(), 0).unwrap();
        assert_eq!(m.records[0], Err(RecordError::Protocol));
        assert_eq!(m.records[1], Err(RecordError::State));
        assert!(m.records[2].is_ok() && m.records[3].is_ok());
        assert!(m.records[4].is_ok());
        assert_eq!(m.records[5], Err(RecordError::State));

        let mut m = kernel_v1();
        // The sequence option's type becomes an unknown mandatory one, then an optional one.
        m[44] = 9;
        assert_eq!(
            decode(&m, 0).unwrap().records[0],
            Err(RecordError::MandatoryOption)
        );
        m[44] = 9 | 0x40;
        assert!(decode(&m, 0).unwrap().records[0].is_ok());
    }
}
