//! Offering an established connection's direction to the XDP fast path (see
//! [`crate::offload`]): after the slow path forwarded one of its segments.

use super::{Hops, Verdict, OFFLOAD_QUEUE};
use std::net::IpAddr;

use crate::conn::{Conn, ConnKey};
use crate::offload::{eligible, flag, FastOp, Offload};
use crate::proto::Direction;
use crate::sync::Mode;
use crate::types::ForwardMethod;
use crate::wire::Packet;
use crate::wire::{tunnel_header, tunnel_overhead};

/// What a forwarded segment tells the fast path: the direction `dir` of connection `key`
/// (entry `c`), whose segment `p` went to `to` as `out`; `new` is the NAT side's new address
/// and port (unused for direct routing). Queued into `q` and flagged on the connection when
/// the connection is ESTABLISHED TCP by direct routing or NAT, the segment carried no SYN,
/// FIN or RST, and, on a sync master, the backups know its state.
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)] // One call site per direction, each part named.
pub(super) fn offer(
    q: &mut Vec<Offload>,
    hops: &mut Hops<'_>,
    sync: &Mode,
    key: &ConnKey,
    c: &mut Conn,
    dir: Direction,
    p: &Packet,
    to: &IpAddr,
    new: (IpAddr, u16),
    out: &Verdict,
    mark: u32,
) {
    if q.len() >= OFFLOAD_QUEUE
        || !eligible(p.proto, c.state)
        || p.tcp.syn()
        || p.tcp.fin()
        || p.tcp.rst()
        || c.is_template()
        || (sync.master && c.sync_state != c.state)
    {
        return;
    }
    let op = match (c.fwd.method, dir) {
        (ForwardMethod::Route, Direction::Input) => FastOp::Route,
        (ForwardMethod::Masq, Direction::Input) => FastOp::Dnat,
        (ForwardMethod::Masq, Direction::Output) => FastOp::Snat,
        (ForwardMethod::Tunnel, Direction::Input) => FastOp::Tunnel,
        _ => return,
    };
    let Verdict::Forward { ifindex, .. } = *out else {
        return;
    };
    let Some(hop) = hops.get(to) else {
        return;
    };
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&hop.dst_mac);
    eth[6..].copy_from_slice(&hop.src_mac);
    let mut mtu = hop.mtu;
    let mut tunnel = None;
    if op == FastOp::Tunnel {
        // The inner packet's room, as the slow path's check (`forward_in`).
        let over = tunnel_overhead(to.is_ipv6(), &c.fwd.tunnel) as u16;
        mtu = mtu.saturating_sub(over);
        let min = if p.v6 { 1280 } else { 68 };
        // (A header that needs a checksum over the payload stays on the slow path.)
        let header = tunnel_header(&c.fwd.tunnel, p, to.is_ipv6());
        match (hop.src_ip, header) {
            (Some(s), Some(h)) if s.is_ipv6() == to.is_ipv6() && mtu >= min => {
                tunnel = Some((s, h))
            }
            _ => return,
        }
    }
    let o = Offload::new(p, eth, op, new.0, new.1, ifindex, mtu, *key, dir, mark);
    q.push(match tunnel {
        Some((s, h)) => o.with_tunnel(s, h),
        None => o,
    });
    c.flags |= flag(dir);
}
