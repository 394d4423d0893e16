//! Offloading established TCP connections to the XDP program's fast path.
//!
//! Once a TCP connection forwarded by direct routing or NAT is ESTABLISHED, the data path
//! describes each of its directions as the XDP program can apply it without xvsd: the
//! segments' addresses and ports as they arrive, the new MACs, the NAT address and port, the
//! egress interface and MTU, and the checksum differences the rewrite makes ([`Offload`]).
//! A worker installs it in the program's map; from then on that direction's segments without
//! SYN, FIN or RST are rewritten in the kernel's receive path and sent from there. Segments
//! with those flags still come to xvsd, so every state transition happens here, as before.
//! The program counts what it forwards per entry; [`Engine::offloaded`] adds those counts to
//! the connection (its timer, its packet count for the sync daemon) and to the statistics.

use std::net::IpAddr;

use crate::conn::{ConnKey, CONN_F_OFFLOAD_IN, CONN_F_OFFLOAD_OUT};
use crate::datapath::Engine;
use crate::proto::{Direction, TcpState};
use crate::service::Tables;
use crate::stats::Counting;
use crate::types::Time;
use crate::wire::{fold16, words_delta};

/// What the fast path rewrites besides the MACs and the TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FastOp {
    /// Nothing else (direct routing).
    Route = 0,
    /// The destination address and port (NAT, client to real server).
    Dnat = 1,
    /// The source address and port (NAT, real server to client).
    Snat = 2,
    /// An outer IP header and the tunnel's header in front (IPIP, GUE, GRE: IPv4 or IPv6
    /// outside, either inside; see [`crate::wire::tunnel_header`]).
    Tunnel = 3,
}

/// One direction of a connection as the XDP program forwards it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offload {
    /// The segments' source as they arrive.
    pub saddr: IpAddr,
    /// Their destination.
    pub daddr: IpAddr,
    /// Their source port.
    pub sport: u16,
    /// Their destination port.
    pub dport: u16,
    /// The rewrite.
    pub op: FastOp,
    /// The new address (NAT), or the outer destination (IPIP; else unused).
    pub addr: IpAddr,
    /// The outer source (tunnels; else the same as `addr`, unused).
    pub src: IpAddr,
    /// The tunnel's header after the outer IP header (tunnels; else empty).
    pub tunnel: crate::wire::TunnelHeader,
    /// The new port (NAT).
    pub port: u16,
    /// The new destination and source MACs.
    pub eth: [u8; 12],
    /// The egress interface.
    pub ifindex: u32,
    /// The largest IP packet the egress takes (its MTU); larger ones go to xvsd.
    pub max_ip_len: u16,
    /// The change to the IPv4 header checksum (TTL and address): a ones' complement sum of
    /// big-endian words, folded.
    pub ip_delta: u16,
    /// The change to the TCP checksum (address and port), likewise.
    pub l4_delta: u16,
    /// The connection's key in the table.
    pub conn: ConnKey,
    /// Which of its directions.
    pub dir: Direction,
    /// The firewall mark its packets had (for the sync records of a fwmark service).
    pub mark: u32,
}

/// The IPv4 header checksum's change when the TTL drops by one: the word (TTL, protocol) loses
/// 0x0100, which in ones' complement is adding 0xfeff.
const TTL_DELTA: u32 = 0xfeff;

impl Offload {
    /// The fast path's description of a segment `p` that the slow path forwarded with the
    /// MACs `eth` on `ifindex` with `mtu` (for a tunnel, the inner packet's room); `op`'s new
    /// address and port are `addr` and `port` (a tunnel: the outer destination; see
    /// [`Offload::with_tunnel`]).
    #[allow(clippy::too_many_arguments)] // The parts of one rewrite, each named.
    pub(crate) fn new(
        p: &crate::wire::Packet,
        eth: [u8; 12],
        op: FastOp,
        addr: IpAddr,
        port: u16,
        ifindex: u32,
        mtu: u16,
        conn: ConnKey,
        dir: Direction,
        mark: u32,
    ) -> Offload {
        let (old_addr, old_port) = match op {
            FastOp::Route | FastOp::Tunnel => (addr, port),
            FastOp::Dnat => (p.daddr, p.dport),
            FastOp::Snat => (p.saddr, p.sport),
        };
        let addr_delta = words_delta(&old_addr, &addr);
        let port_delta = u32::from(!old_port) + u32::from(port);
        let (ip_delta, l4_delta) = match op {
            FastOp::Route | FastOp::Tunnel => (fold16(TTL_DELTA), 0),
            _ => (
                fold16(TTL_DELTA + if p.v6 { 0 } else { addr_delta }),
                fold16(addr_delta + port_delta),
            ),
        };
        Offload {
            saddr: p.saddr,
            daddr: p.daddr,
            sport: p.sport,
            dport: p.dport,
            op,
            addr,
            src: addr,
            tunnel: crate::wire::TunnelHeader {
                bytes: [0; 12],
                len: 0,
                proto: 0,
            },
            port,
            eth,
            ifindex,
            max_ip_len: mtu,
            ip_delta,
            l4_delta,
            conn,
            dir,
            mark,
        }
    }
}

impl Offload {
    /// The same with `src` as the outer source and `tunnel` as the tunnel's header.
    pub(crate) fn with_tunnel(mut self, src: IpAddr, tunnel: crate::wire::TunnelHeader) -> Offload {
        self.src = src;
        self.tunnel = tunnel;
        self
    }
}

/// The connection flag of a direction's offload.
pub(crate) fn flag(dir: Direction) -> u16 {
    match dir {
        Direction::Input => CONN_F_OFFLOAD_IN,
        Direction::Output => CONN_F_OFFLOAD_OUT,
    }
}

/// Whether the connection is one the fast path may take: TCP, ESTABLISHED.
pub(crate) fn eligible(proto: u8, state: u8) -> bool {
    proto == crate::wire::IPPROTO_TCP && state == TcpState::Established as u8
}

/// What the fast path forwarded of one direction since it was last collected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastCounts {
    /// Segments.
    pub packets: u64,
    /// IP bytes.
    pub bytes: u64,
    /// When the last of them passed, on the engine's clock.
    pub last: Option<Time>,
}

impl Engine {
    /// Collect what the fast path forwarded for the direction `o` of a connection: the
    /// statistics, the connection's timer (re-armed from its last segment, as each segment
    /// would have), its packet count and, on a sync master, the record that count makes due.
    /// `ended`: the entry is gone from the fast path, so the connection's flag is cleared (a
    /// later segment through xvsd may offload it again). False when the connection is gone.
    pub fn offloaded(
        &self,
        t: &Tables,
        o: &Offload,
        n: FastCounts,
        ended: bool,
        now: Time,
    ) -> bool {
        let mode = self.sync.mode();
        let key = &o.conn;
        self.conns
            .with_conn(key, now, |c| {
                if ended {
                    c.flags &= !flag(o.dir);
                }
                if n.packets == 0 {
                    return;
                }
                if c.dest.is_available() {
                    let w = Counting::SHARED;
                    match o.dir {
                        Direction::Input => {
                            c.dest.stats.count_in_n(w, n.packets, n.bytes);
                            c.svc.stats.count_in_n(w, n.packets, n.bytes);
                            t.totals.count_in_n(w, n.packets, n.bytes);
                        }
                        Direction::Output => {
                            c.dest.stats.count_out_n(w, n.packets, n.bytes);
                            c.svc.stats.count_out_n(w, n.packets, n.bytes);
                            t.totals.count_out_n(w, n.packets, n.bytes);
                        }
                    }
                }
                if let Some(last) = n.last {
                    let expires = last.plus_secs(c.timeout);
                    if expires > c.expires {
                        c.expires = expires;
                    }
                }
                if o.dir != Direction::Input {
                    return;
                }
                let old = u32::from(c.in_pkts);
                c.in_pkts = c.in_pkts.wrapping_add(n.packets as u16);
                if !mode.master {
                    return;
                }
                // The first count in (old, old + packets] at which the sync decision would
                // have sent the connection (one period holds one if any).
                let due = (1..=n.packets.min(u64::from(mode.period().max(1)))).find_map(|k| {
                    let pkts = old.wrapping_add(k as u32) & 0xffff;
                    mode.may_send(c, pkts).then_some(pkts)
                });
                if let Some(pkts) = due {
                    self.sync_conn(key.view(), c, pkts, o.mark, now);
                }
            })
            .is_some()
    }
}
