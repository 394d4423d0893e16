//! A frame's way in: parse, classify (a connection's packet, a NAT reply, an ICMP error, a new
//! connection), the connection's state transition and its accounting.

use super::offer::offer;
use super::{put, Batch, DropReason, Engine, FirstLookup, NewConn, Settled, Verdict};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::conn::{Conn, ConnKey, KeyRef, CONN_F_INACTIVE, CONN_F_NOOUTPUT};
use crate::dest::ConnForward;
use crate::offload;
use crate::proto::{
    sctp_next_state, sctp_state_active, tcp_next_state, tcp_state_active, Direction, SctpState,
    TcpFlags, TcpState, Timeouts,
};
use crate::service::Tables;
use crate::stats::Counting;
use crate::types::{Protocol, Time};
use crate::wire::{is_icmp_error, parse, Frame, IcmpError, Packet, ParseError};

/// Where a client packet goes: its connection's real server and forwarding method, the address
/// borrowed where it lives (the destination's state, under the shard's lock on the established
/// path), not copied out (store forwarding).
#[derive(Debug, Clone, Copy)]
pub(super) struct Hit<'a> {
    pub(super) daddr: &'a IpAddr,
    pub(super) dport: u16,
    pub(super) fwd: &'a ConnForward,
}

impl Hit<'_> {
    fn of(c: &Conn) -> Hit<'_> {
        Hit {
            daddr: &c.dest.addr,
            dport: c.dport,
            fwd: &c.fwd,
        }
    }
}

pub(super) enum InResult {
    /// The connection takes the packet; the template to assure when this packet established the
    /// connection (boxed: a copy of the connection's own box, made once in a connection's life,
    /// keeps this result small for the other packets).
    Hit(Option<Box<ConnKey>>),
    Drop(DropReason),
    Reschedule,
}

/// Whether `src` may not start a connection to `dst`: the sources the kernel's routing drops
/// as martians before IPVS sees them (IPv4: `ip_route_input_slow` — 0.0.0.0/8, multicast,
/// the limited broadcast, loopback; IPv6: `ip6_rcv_core` — multicast, loopback, and the
/// unspecified address, which no TCP or UDP flow may use), and a packet from the virtual
/// address to itself (a local source, refused by `fib_validate_source`).
pub(super) fn is_martian_source(src: &IpAddr, dst: &IpAddr) -> bool {
    src == dst
        || match src {
            IpAddr::V4(a) => {
                a.octets()[0] == 0 || a.is_multicast() || a.is_broadcast() || a.is_loopback()
            }
            IpAddr::V6(a) => a.is_multicast() || a.is_loopback() || a.is_unspecified(),
        }
}

/// A frame's firewall mark: its own, or, without one, the mark rules' (what netfilter's
/// PREROUTING gives the kernel's IPVS).
#[inline]
pub(super) fn mark_of(t: &Tables, frame: &Frame<'_>, p: &Packet) -> u32 {
    if frame.mark() == 0 && !t.marks.is_empty() {
        t.marks.classify(frame.ifindex(), p)
    } else {
        frame.mark()
    }
}

pub(super) fn fwmark_addr(af_v6: bool, mark: u32) -> IpAddr {
    if af_v6 {
        let b = mark.to_be_bytes();
        IpAddr::V6(Ipv6Addr::from([
            b[0], b[1], b[2], b[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ]))
    } else {
        IpAddr::V4(Ipv4Addr::from(mark))
    }
}

/// Count a packet in its destination's, its service's and the global counters; the kernel
/// skips this while the destination is unavailable.
pub(super) fn account(c: &Conn, t: &Tables, dir: Direction, len: usize, w: Counting) {
    if !c.dest.is_available() {
        return;
    }
    match dir {
        Direction::Input => {
            c.dest.stats.count_in(w, len);
            c.svc.stats.count_in(w, len);
            t.totals.count_in(w, len);
        }
        Direction::Output => {
            c.dest.stats.count_out(w, len);
            c.svc.stats.count_out(w, len);
            t.totals.count_out(w, len);
        }
    }
}

/// Move a connection between ActiveConn and InActConn as its new state requires.
fn set_active(c: &mut Conn, active: bool) {
    let inactive = c.flags & CONN_F_INACTIVE != 0;
    if !inactive && !active {
        c.dest.move_conn(true);
        c.flags |= CONN_F_INACTIVE;
    } else if inactive && active {
        c.dest.move_conn(false);
        c.flags &= !CONN_F_INACTIVE;
    }
}

/// Apply a packet to a connection's state and timer (`ip_vs_set_state` + timer re-arm). Returns
/// true when a TCP or SCTP connection just became ESTABLISHED (its template becomes ASSURED).
#[inline(always)] // Once per packet.
pub(super) fn transition(
    c: &mut Conn,
    proto: Protocol,
    dir: Direction,
    p: &Packet,
    t: &Timeouts,
    now: Time,
    secure: &AtomicBool,
) -> bool {
    let flags = p.tcp;
    match proto {
        Protocol::Udp => {
            if dir == Direction::Output {
                c.flags &= !CONN_F_NOOUTPUT;
            }
            c.rearm(now, t.udp);
            dir == Direction::Output && c.template.is_some()
        }
        Protocol::Tcp => {
            // Most packets: a plain ACK of an established connection, which stays so in every
            // direction (the test proto::tests::ack_keeps_established).
            if c.state == TcpState::Established as u8 && flags == TcpFlags::ACK {
                if dir == Direction::Output {
                    c.flags &= !CONN_F_NOOUTPUT;
                }
                c.rearm(now, t.tcp[TcpState::Established as usize]);
                return false;
            }
            let cur = TcpState::from_u8(c.state).unwrap_or(TcpState::None);
            let no_output = c.flags & CONN_F_NOOUTPUT != 0;
            if dir == Direction::Output {
                c.flags &= !CONN_F_NOOUTPUT;
            }
            let new = tcp_next_state(cur, dir, no_output, flags, secure.load(Relaxed));
            let mut established = false;
            if new != cur {
                // `set_tcp_state`: between ActiveConn and InActConn as the state crosses the
                // line of `tcp_state_active`.
                set_active(c, tcp_state_active(new));
                established = new == TcpState::Established;
                c.state = new as u8;
            }
            c.rearm(now, t.tcp[new as usize]);
            established && c.template.is_some()
        }
        Protocol::Sctp => sctp_transition(c, dir, p, t, now),
    }
}

/// `set_sctp_state`: a packet without a whole chunk header changes nothing but the timer.
#[inline(never)]
fn sctp_transition(c: &mut Conn, dir: Direction, p: &Packet, t: &Timeouts, now: Time) -> bool {
    let Some(ch) = p.sctp else {
        c.rearm(now, c.timeout);
        return false;
    };
    let cur = SctpState::from_u8(c.state).unwrap_or(SctpState::None);
    let no_output = c.flags & CONN_F_NOOUTPUT != 0;
    if dir == Direction::Output {
        c.flags &= !CONN_F_NOOUTPUT;
    }
    let new = sctp_next_state(cur, dir, no_output, ch.event);
    let mut established = false;
    if new != cur {
        set_active(c, sctp_state_active(new));
        established = new == SctpState::Established;
        c.state = new as u8;
    }
    c.rearm(now, t.sctp[new as usize]);
    established && c.template.is_some()
}

/// What a client → server packet does to its connection `c` (under the shard's lock): the
/// connection-reuse and unavailable-destination checks, then the state, the timer and the
/// counters; the hit to forward by.
#[inline(always)] // Once per established packet: its result stays in registers.
pub(super) fn hit_in(
    c: &mut Conn,
    t: &Tables,
    p: &Packet,
    proto: Protocol,
    now: Time,
    w: Counting,
    secure: &AtomicBool,
) -> InResult {
    if proto == Protocol::Tcp && p.tcp.syn() && reused_by_syn(c, t) {
        return InResult::Reschedule;
    }
    if proto == Protocol::Sctp && reused_by_init(c, t, p) {
        return InResult::Reschedule;
    }
    if !c.dest.is_available() {
        return if t.settings.expire_nodest_conn {
            InResult::Reschedule
        } else {
            InResult::Drop(DropReason::DestUnavailable)
        };
    }
    c.in_pkts = c.in_pkts.wrapping_add(1);
    let assure = transition(c, proto, Direction::Input, p, &t.timeouts, now, secure);
    account(c, t, Direction::Input, p.ip_len, w);
    InResult::Hit(assure.then(|| c.template.clone()).flatten())
}

/// Whether a SYN for the existing connection `c` starts a new one (`conn_reuse_mode`): out of
/// the established path's loop, which only tests for the SYN.
#[cold]
#[inline(never)]
pub(super) fn reused_by_syn(c: &Conn, t: &Tables) -> bool {
    if c.template.is_some() || t.settings.conn_reuse_mode == 0 {
        return false;
    }
    let s = TcpState::from_u8(c.state);
    matches!(s, Some(TcpState::TimeWait | TcpState::Close))
        || (t.settings.conn_reuse_mode & 2 != 0
            && s == Some(TcpState::FinWait)
            && c.flags & CONN_F_NOOUTPUT != 0)
}

/// Whether an INIT for the existing SCTP connection `c` starts a new one (`conn_reuse_mode`:
/// `is_new_conn` sees an INIT, `is_new_conn_expected` a CLOSED association).
#[cold]
#[inline(never)]
fn reused_by_init(c: &Conn, t: &Tables, p: &Packet) -> bool {
    p.sctp
        .is_some_and(|ch| ch.first == crate::proto::chunk::INIT)
        && c.template.is_none()
        && t.settings.conn_reuse_mode != 0
        && c.state == SctpState::Closed as u8
}

/// A TCP RST or an SCTP packet whose first chunk is an ABORT (`is_tcp_reset`,
/// `is_sctp_abort`): `nat_icmp_send` does not answer them.
fn is_reset(proto: Protocol, p: &Packet) -> bool {
    match proto {
        Protocol::Tcp => p.tcp.rst(),
        Protocol::Sctp => p
            .sctp
            .is_some_and(|c| c.first == crate::proto::chunk::ABORT),
        Protocol::Udp => false,
    }
}

impl Engine {
    #[inline(always)] // The per-frame step of `process`'s loop.
    pub(super) fn classify(
        &self,
        b: &mut Batch<'_>,
        frame: &mut Frame<'_>,
        out: &mut Verdict,
    ) -> Settled {
        let p = parse(frame.data());
        self.classify_parsed(b, frame, &p, None, out)
    }

    /// One frame's verdict, written into `out` (see [`Settled`]).
    #[inline(always)]
    pub(super) fn classify_parsed(
        &self,
        b: &mut Batch<'_>,
        frame: &mut Frame<'_>,
        parsed: &Result<Packet, ParseError>,
        first: Option<FirstLookup>,
        out: &mut Verdict,
    ) -> Settled {
        let (t, cx) = (b.t, b.step);
        let p = match parsed {
            Ok(p) => p,
            Err(ParseError::NotIp) => return put(out, Verdict::Pass),
            Err(ParseError::Malformed) => return put(out, self.drop(DropReason::Malformed)),
            Err(ParseError::Fragment) => return put(out, self.drop(DropReason::Fragment)),
            Err(ParseError::Ipv6Extension) => {
                return put(out, self.drop(DropReason::Ipv6Extension))
            }
        };
        if b.sync.pass_all {
            // A node running a backup daemon with `backup_only` balances nothing.
            return put(out, Verdict::Pass);
        }
        let proto = match Protocol::from_number(p.proto) {
            Some(proto) => proto,
            None if is_icmp_error(p) => {
                return put(out, self.icmp(t, &mut b.hops, frame, p, cx.now))
            }
            None => return put(out, Verdict::Pass),
        };
        // The prefetching pass has already asked whether this is a NAT source, and hashed the
        // client side of the first lookup (the reply's for a NAT source).
        let (from_nat, h) = match first {
            Some(fl) => (fl.from_nat, Some(fl.h)),
            None => (t.is_nat_source(proto, &p.saddr, p.sport), None),
        };
        // The first lookup's hash is the reply's for a NAT source, else the connection's.
        let h_in = if from_nat {
            if let Some(o) = self.reply(b, frame, p, h, out) {
                return o;
            }
            None
        } else {
            h
        };
        let key = KeyRef {
            proto: p.proto,
            caddr: &p.saddr,
            cport: p.sport,
            vaddr: &p.daddr,
            vport: p.dport,
        };
        if let Some(mut c) = self.conns.conn_at(h_in, key, cx.now) {
            match hit_in(
                &mut c,
                t,
                p,
                proto,
                cx.now,
                cx.w,
                self.defence.secure_flag(),
            ) {
                InResult::Hit(tpl) => {
                    // Forwarded under the shard's lock, reading the destination where it is.
                    let v = self.forward_in(&mut b.hops, frame, p, Hit::of(&c), out);
                    let sync_tpl = if b.sync.master {
                        let pkts = u32::from(c.in_pkts);
                        if b.sync.may_send(&c, pkts) {
                            self.sync_conn(key, &mut c, pkts, mark_of(t, frame, p), cx.now);
                        }
                        c.template.as_deref().copied()
                    } else {
                        None
                    };
                    // After the sync decision: on a master, the backups know the state first.
                    if let Some(q) = b.offloads.as_deref_mut() {
                        if c.flags & offload::flag(Direction::Input) == 0 {
                            let (to, new) = (c.dest.addr, (c.dest.addr, c.dport));
                            let mark = mark_of(t, frame, p);
                            let k = key.to_key();
                            let (hops, sync) = (&mut b.hops, &b.sync);
                            offer(
                                q,
                                hops,
                                sync,
                                &k,
                                &mut c,
                                Direction::Input,
                                p,
                                &to,
                                new,
                                out,
                                mark,
                            );
                        }
                    }
                    drop(c);
                    if let Some(tk) = tpl {
                        self.conns.assure_template(&tk);
                    }
                    if let Some(tk) = sync_tpl {
                        self.sync_template(&tk, mark_of(t, frame, p), cx.now);
                    }
                    return v;
                }
                InResult::Drop(r) => {
                    drop(c);
                    return put(out, self.drop(r));
                }
                InResult::Reschedule => {
                    drop(c);
                    self.conns.remove(&key.to_key());
                }
            }
        }
        if from_nat {
            // Not a reply of ours (e.g. a client talking to the real server directly through
            // this box): the kernel's business, as in IPVS; with `nat_icmp_send`, refused.
            // A SIP server's own request makes a connection of its service.
            if let Some(s) = self.sip_conn_out(b, frame, p, out) {
                return s;
            }
            if t.settings.nat_icmp_send && !is_reset(proto, p) {
                return put(out, self.icmp_reply(frame, p, IcmpError::PortUnreachable));
            }
            return put(out, Verdict::Pass);
        }
        match t.lookup(proto, p.daddr, p.dport, mark_of(t, frame, p)) {
            Some(svc) => {
                let nc = NewConn {
                    proto,
                    key: key.to_key(),
                    h: h_in,
                    svc,
                };
                self.new_conn(b, frame, p, nc, out)
            }
            None => put(out, Verdict::Pass),
        }
    }
}
