//! Transmission: the rewrite of each forwarding method (direct routing, tunnel, NAT) both ways,
//! with the MTU and TTL checks before it.

use super::inbound::{account, transition, Hit};
use super::offer::offer;
use super::{put, Batch, DropReason, Engine, Hops, Settled, Step, Verdict};
use std::net::IpAddr;

use crate::conn::{ClientHash, ReplyKey};
use crate::offload;
use crate::proto::Direction;
use crate::types::{ForwardMethod, Protocol};
use crate::wire::{
    self, dec_ttl, encapsulate, nat_rewrite, set_macs, tunnel_overhead, Frame, IcmpError, NatSide,
    Packet,
};

impl Engine {
    /// A NAT reply, server → client: None when it belongs to no connection, else its verdict,
    /// written into `out` as for client packets.
    #[inline(never)] // Out of the client packets' loop, which it would only make longer.
    pub(super) fn reply(
        &self,
        b: &mut Batch<'_>,
        frame: &mut Frame<'_>,
        p: &Packet,
        h: Option<ClientHash>,
        out: &mut Verdict,
    ) -> Option<Settled> {
        let (t, cx, hops, sync) = (b.t, b.step, &mut b.hops, &b.sync);
        let offloads = &mut b.offloads;
        let Step { now, w } = cx;
        let proto = Protocol::from_number(p.proto)?;
        let rk = ReplyKey {
            proto: p.proto,
            daddr: p.saddr,
            dport: p.sport,
            caddr: p.daddr,
            cport: p.dport,
        };
        let (o, tpl) = self.conns.with_reply_at(h, &rk, now, |key, c| {
            let assure = transition(
                c,
                proto,
                Direction::Output,
                p,
                &t.timeouts,
                now,
                self.defence.secure_flag(),
            );
            account(c, t, Direction::Output, p.ip_len, w);
            // Rewritten under the shard's lock, the virtual address read where it lives:
            // copied out through a result, it was read back in words that straddle the
            // stores that wrote it (see `Hit`).
            let o = self.forward_reply(hops, frame, p, &key.vaddr, key.vport, out);
            if let Some(q) = offloads.as_deref_mut() {
                if c.flags & offload::flag(Direction::Output) == 0 {
                    let new = (key.vaddr, key.vport);
                    // (Only the client's direction makes sync records: no mark here.)
                    offer(
                        q,
                        hops,
                        sync,
                        key,
                        c,
                        Direction::Output,
                        p,
                        &p.daddr,
                        new,
                        out,
                        0,
                    );
                }
            }
            (o, assure.then(|| c.template.clone()).flatten())
        })?;
        if let Some(tk) = tpl {
            self.conns.assure_template(&tk);
        }
        Some(o)
    }

    /// Send a NAT reply to its client with the virtual service as its source; a forward
    /// verdict is written into `out` (see [`Settled`]).
    #[inline(always)]
    pub(super) fn forward_reply(
        &self,
        hops: &mut Hops<'_>,
        frame: &mut Frame<'_>,
        p: &Packet,
        vaddr: &IpAddr,
        vport: u16,
        out: &mut Verdict,
    ) -> Settled {
        let Some(hop) = hops.get(&p.daddr) else {
            return put(out, self.drop(DropReason::NoRoute));
        };
        if let Some(v) = self.check_size_and_ttl(frame, p, usize::from(hop.mtu)) {
            return put(out, v);
        }
        let d = frame.data_mut();
        nat_rewrite(d, p, NatSide::Src, *vaddr, vport);
        dec_ttl(d, p);
        set_macs(d, hop);
        *out = Verdict::Forward {
            ifindex: hop.ifindex,
            real: None,
        };
        Settled
    }

    /// MTU and TTL checks before forwarding; Some(verdict) when the packet cannot go on.
    #[inline(always)] // Once per forwarded packet: a call costs more than its two compares.
    pub(super) fn check_size_and_ttl(
        &self,
        frame: &mut Frame<'_>,
        p: &Packet,
        mtu: usize,
    ) -> Option<Verdict> {
        if p.ip_len > mtu {
            if p.df {
                let mtu = mtu.min(usize::from(u16::MAX)) as u16;
                return Some(self.icmp_reply(frame, p, IcmpError::TooBig(mtu)));
            }
            return Some(self.drop(DropReason::TooBig));
        }
        if p.ttl <= 1 {
            return Some(self.icmp_reply(frame, p, IcmpError::TimeExceeded));
        }
        None
    }

    /// Send a client packet to its real server by the connection's forwarding method; a forward
    /// verdict is written into `out` (see [`Settled`]).
    #[inline(always)]
    pub(super) fn forward_in(
        &self,
        hops: &mut Hops<'_>,
        frame: &mut Frame<'_>,
        p: &Packet,
        hit: Hit<'_>,
        out: &mut Verdict,
    ) -> Settled {
        let Some(hop) = hops.get(hit.daddr) else {
            return put(out, self.drop(DropReason::NoRoute));
        };
        match hit.fwd.method {
            ForwardMethod::Route | ForwardMethod::Masq => {
                if let Some(v) = self.check_size_and_ttl(frame, p, usize::from(hop.mtu)) {
                    return put(out, v);
                }
                let d = frame.data_mut();
                if hit.fwd.method == ForwardMethod::Masq {
                    nat_rewrite(d, p, NatSide::Dst, *hit.daddr, hit.dport);
                }
                dec_ttl(d, p);
                set_macs(d, hop);
            }
            ForwardMethod::Tunnel => {
                let over = tunnel_overhead(hit.daddr.is_ipv6(), &hit.fwd.tunnel);
                let mtu = usize::from(hop.mtu).saturating_sub(over);
                let min = if p.v6 { 1280 } else { 68 };
                if mtu < min {
                    return put(out, self.drop(DropReason::TooBig));
                }
                if let Some(v) = self.check_size_and_ttl(frame, p, mtu) {
                    return put(out, v);
                }
                dec_ttl(frame.data_mut(), p);
                match encapsulate(frame, p, hop.src_ip, *hit.daddr, &hit.fwd.tunnel) {
                    Ok(()) => {}
                    Err(wire::EncapError::NoHeadroom) => {
                        return put(out, self.drop(DropReason::NoHeadroom))
                    }
                    Err(wire::EncapError::NoSource) => {
                        return put(out, self.drop(DropReason::NoTunnelSource))
                    }
                }
                set_macs(frame.data_mut(), hop);
            }
        }
        *out = Verdict::Forward {
            ifindex: hop.ifindex,
            real: Some((*hit.daddr, hit.dport)),
        };
        Settled
    }
}
