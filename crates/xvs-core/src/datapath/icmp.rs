//! ICMP: the errors xvs sends itself, and ICMP errors about existing connections relayed to
//! their other end.

use super::inbound::account;
use super::{DropReason, Engine, Hops, Verdict};
use crate::conn::{ConnKey, ReplyKey};
use crate::proto::Direction;
use crate::service::Tables;
use crate::stats::Counting;
use crate::types::{ForwardMethod, Protocol, Time};
use crate::wire::{
    self, encapsulate, icmp_error_in_place, is_icmp_error, nat_icmp, parse_quoted, set_macs, Frame,
    IcmpError, NatSide, Packet,
};

impl Engine {
    pub(super) fn icmp_reply(&self, frame: &mut Frame<'_>, p: &Packet, kind: IcmpError) -> Verdict {
        // Never answer an ICMP error with an ICMP error.
        if is_icmp_error(p) {
            return self.drop(match kind {
                IcmpError::TimeExceeded => DropReason::TtlExceeded,
                IcmpError::TooBig(_) => DropReason::TooBig,
                IcmpError::PortUnreachable => DropReason::NoDest,
            });
        }
        match icmp_error_in_place(frame, p, kind) {
            Ok(()) => Verdict::Reply(kind),
            Err(_) => self.drop(DropReason::NoHeadroom),
        }
    }

    /// ICMP errors about existing connections (reference §4.8).
    pub(super) fn icmp(
        &self,
        t: &Tables,
        hops: &mut Hops<'_>,
        frame: &mut Frame<'_>,
        p: &Packet,
        now: Time,
    ) -> Verdict {
        let Some(q) = parse_quoted(frame.data(), p) else {
            return Verdict::Pass;
        };
        // An error goes back to the source of the packet it quotes (RFC 1122 3.2.2): the VIP
        // for a reply of ours, the client for a packet xvs sent on to a NAT real server. One
        // addressed elsewhere (the balancer's own address, say) is not about a connection of
        // ours: the kernel's business, never relayed to a real server.
        if Protocol::from_number(q.proto).is_none() || p.daddr != q.saddr {
            return Verdict::Pass;
        }
        // From outside: the quoted packet went VIP → client.
        let key = ConnKey {
            proto: q.proto,
            caddr: q.daddr,
            cport: q.dport,
            vaddr: q.saddr,
            vport: q.sport,
        };
        let hit = self.conns.with_conn(&key, now, |c| {
            account(c, t, Direction::Input, p.ip_len, Counting::SHARED);
            (c.dest.addr, c.dport, c.fwd)
        });
        if let Some((daddr, dport, fwd)) = hit {
            let Some(hop) = hops.get(&daddr) else {
                return self.drop(DropReason::NoRoute);
            };
            match fwd.method {
                ForwardMethod::Masq => {
                    let d = frame.data_mut();
                    nat_icmp(d, p, &q, NatSide::Src, daddr, dport);
                    set_macs(d, hop);
                }
                ForwardMethod::Route => set_macs(frame.data_mut(), hop),
                ForwardMethod::Tunnel => {
                    if let Err(e) = encapsulate(frame, p, hop.src_ip, daddr, &fwd.tunnel) {
                        return self.drop(match e {
                            wire::EncapError::NoHeadroom => DropReason::NoHeadroom,
                            wire::EncapError::NoSource => DropReason::NoTunnelSource,
                        });
                    }
                    set_macs(frame.data_mut(), hop);
                }
            }
            return Verdict::Forward {
                ifindex: hop.ifindex,
                real: Some((daddr, dport)),
            };
        }
        // From a NAT real server: the quoted packet went client → real server.
        let rk = ReplyKey {
            proto: q.proto,
            daddr: q.daddr,
            dport: q.dport,
            caddr: q.saddr,
            cport: q.sport,
        };
        let back = self.conns.with_reply(&rk, now, |k, c| {
            account(c, t, Direction::Output, p.ip_len, Counting::SHARED);
            (k.vaddr, k.vport)
        });
        if let Some((vaddr, vport)) = back {
            let Some(hop) = hops.get(&p.daddr) else {
                return self.drop(DropReason::NoRoute);
            };
            let d = frame.data_mut();
            nat_icmp(d, p, &q, NatSide::Dst, vaddr, vport);
            set_macs(d, hop);
            return Verdict::Forward {
                ifindex: hop.ifindex,
                real: None,
            };
        }
        Verdict::Pass
    }
}
